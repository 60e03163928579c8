from pathlib import Path
from types import ModuleType

import pytest

from common.seeds import pytest_runtest_makereport, rng_seed  # noqa: F401  (seeded random cases)
from labs.impl import load_impl


@pytest.fixture(scope="module")
def impl(request) -> ModuleType:
    """The implementation under test (see labs/impl.py)."""
    return load_impl(Path(request.module.__file__).parent)
