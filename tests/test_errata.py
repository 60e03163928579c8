"""ERRATA.md is generated from the notebooks' claim(...) records and must be current."""
from __future__ import annotations

import pytest

from common.errata import ERRATA_FILE, Claim, collect, render


def test_errata_file_is_current() -> None:
    expected = render(collect())
    current = ERRATA_FILE.read_text(encoding="utf-8") if ERRATA_FILE.exists() else ""
    assert current == expected, "ERRATA.md is not current: run `python -m common.errata` (or `make errata`)"


def test_every_measured_chapter_has_claims() -> None:
    chapters = {int(nb.parent.name[2:4]) for nb, _, _ in collect()}
    measured = {3, 5, 6, 7, 8, 9, 10}
    assert chapters >= measured, f"chapters with no claim(...) rows: {sorted(measured - chapters)}"


@pytest.mark.parametrize("kwargs, message", [
    (dict(where="§1", book="x", found="y", status="maybe"), "status"),
    (dict(where="§1", book="x", found="y", status="unmeasurable"), "why"),
    (dict(where=" ", book="x", found="y", status="ok"), "where"),
])
def test_bad_claims_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Claim(**kwargs)
