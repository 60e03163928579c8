"""scripts/spellcheck.py: finds a misspelling in a notebook's cell source, ignores the same word in an output,
and names the notebook and cell it came from."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "spellcheck.py"


def load_spellcheck():
    spec = importlib.util.spec_from_file_location("spellcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# misspellings assembled at run time, so that this file itself passes the check
RECEIVED_TYPO, THE_TYPO, SEPARATE_TYPO = "rec" + "ieved", "t" + "eh", "sep" + "erate"


def test_notebook_sources_checked_outputs_ignored(tmp_path, monkeypatch):
    spellcheck = load_spellcheck()
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(f"x = 1  # the {RECEIVED_TYPO} tokens")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{THE_TYPO} model said {SEPARATE_TYPO}\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("fine text"), code]
    (tmp_path / "chapters" / "ch99").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "chapters" / "ch99" / "01-x.ipynb")
    monkeypatch.setattr(spellcheck, "REPO", tmp_path)
    findings = spellcheck.check_notebook_sources(SCRIPT.parents[1] / "pyproject.toml")
    assert len(findings) == 1, findings
    assert findings[0].startswith("chapters/ch99/01-x.ipynb[cell 1]:1:") and RECEIVED_TYPO in findings[0]

