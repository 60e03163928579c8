"""Spelling check for `make lint`: codespell over the repository (config: pyproject.toml [tool.codespell])
and over every notebook's cell sources, never its outputs (a model's generated text is not ours to spell).

codespell reads a notebook as JSON, outputs included, so the sources are copied cell by cell into a scratch
directory, checked there, and every finding is reported as `notebook.ipynb[cell N]:line: word ==> fix`.

    .venv/bin/python scripts/spellcheck.py      # exit 0 = clean, 1 = misspellings found
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIRS = ("chapters", "labs")


def codespell(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codespell_lib", *args], cwd=cwd, capture_output=True, text=True)


def notebooks() -> list[Path]:
    return sorted(p for d in NOTEBOOK_DIRS for p in (REPO / d).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def check_notebook_sources(config: Path) -> list[str]:
    """Findings in the notebooks' cell sources, named `path.ipynb[cell N]:line: ...`."""
    findings = []
    with tempfile.TemporaryDirectory(prefix="spellcheck-") as tmp:
        names: dict[str, str] = {}
        for nb_path in notebooks():
            nb = nbformat.read(nb_path, as_version=4)
            rel = nb_path.relative_to(REPO).as_posix()
            for i, cell in enumerate(nb.cells):
                name = f"{len(names):05d}.txt"
                names[name] = f"{rel}[cell {i}]"
                (Path(tmp) / name).write_text(cell.source)
        if not names:
            return []
        result = codespell(["--toml", str(config), *sorted(names)], cwd=Path(tmp))
        for line in result.stdout.splitlines():
            file, _, rest = line.partition(":")
            findings.append(f"{names.get(file.removeprefix('./'), file)}:{rest}")
    return findings


def main() -> int:
    config = REPO / "pyproject.toml"
    tree = codespell(["--toml", str(config), "."], cwd=REPO)
    findings = tree.stdout.splitlines() + check_notebook_sources(config)
    if tree.returncode not in (0, 65):   # 65 = misspellings found; anything else is codespell failing
        print(tree.stderr, file=sys.stderr)
        return 2
    for line in findings:
        print(line)
    if findings:
        print(f"codespell: {len(findings)} misspelling(s); fix them, or add a real term to "
              "[tool.codespell] ignore-words-list in pyproject.toml", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
