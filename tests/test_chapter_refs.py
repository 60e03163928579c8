"""scripts/chapter_refs.py: the section references it reads out of docstrings, and its three outcomes."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chapter_refs.py"


def load():
    spec = importlib.util.spec_from_file_location("chapter_refs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_references_found_in_text():
    refs = load().references
    assert refs("Occupancy (§3.2.7): blocks per SM; see §3.2.7 again and 第 5 章, chapter 6, ch10.") == [
        "§3.2.7", "第 5 章", "chapter 6", "ch10"]
    assert refs("定义于 第6章 §6.3–6.4") == ["第6章", "§6.3–6.4"]
    assert refs("no reference, 3.2 is a number") == [] and refs(None) == []


def test_own_module_and_missing(tmp_path, monkeypatch):
    mod = load()
    pkg = tmp_path / "common"
    pkg.mkdir()
    (pkg / "x.py").write_text('"""Paged attention (§6.3)."""\n\n\ndef a():\n    """定义于 第6章 §6.2"""\n\n\n'
                              'def b():\n    """no reference"""\n\n\nclass C:\n    pass\n\n\n'
                              'def _private():\n    pass\n')
    (pkg / "y.py").write_text("def d():\n    pass\n")
    monkeypatch.setattr(mod, "REPO", tmp_path)
    rows = {name: (own, module) for name, _, own, module in mod.public_objects(pkg / "x.py")}
    assert rows == {"common.x.a": (["第6章", "§6.2"], ["§6.3"]), "common.x.b": ([], ["§6.3"]),
                    "common.x.C": ([], ["§6.3"])}
    assert mod.public_objects(pkg / "y.py") == [("common.y.d", "function", [], [])]
