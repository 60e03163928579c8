"""scripts/chapter_refs.py: every public function and class of common/ names its book section (「定义于 第N章 §x」),
and the check fails when one is missing, wrong or not a section of the book's outline."""
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


def test_every_public_object_of_common_names_its_section():
    mod = load()
    found = [p for path in mod.source_files() for p in mod.problems(path)]
    assert found == [], "\n".join(found)


def test_module_map_points_into_the_outline_and_at_real_modules():
    mod = load()
    modules = {mod.module_name(p) for p in mod.source_files()}
    assert sorted(set(mod.MODULE_SECTIONS) - modules) == []          # no stale entries
    assert sorted(s for s in mod.MODULE_SECTIONS.values() if s is not None and s not in mod.OUTLINE) == []
    # each lab chapter of the repo (chapters/chNN-*) has its sections in the outline
    chapters = {int(p.name[2:4]) for p in (mod.REPO / "chapters").glob("ch[0-9][0-9]-*")}
    assert chapters and all(any(s.split(".")[0] == str(n) for s in mod.OUTLINE) for n in chapters)
    assert {"3.2.7", "5.11.7", "6.3.4", "7.4.6", "8.2.1", "9.5", "10.5.5", "11.1.7"} <= mod.OUTLINE


def test_problems_catch_missing_wrong_and_unknown_references(tmp_path, monkeypatch):
    mod = load()
    pkg = tmp_path / "common"
    pkg.mkdir()
    path = pkg / "synthetic.py"
    monkeypatch.setattr(mod, "REPO", tmp_path)
    sections = {"common.synthetic": "6.3.4", "common.tool": None}
    good = ('"""Module."""\n\n\ndef f():\n    """Why f exists.\n\n    定义于 第6章 §6.3.4\n    """\n\n\n'
            'class K:\n    """Why K exists.\n\n    定义于 第6章 §6.3.4\n    """\n\n\ndef _hidden():\n    pass\n')
    path.write_text(good)
    assert mod.problems(path, sections) == []
    # the reference removed from one object: reported, by name
    path.write_text(good.replace('    """Why K exists.\n\n    定义于 第6章 §6.3.4\n    """\n', "    pass\n"))
    assert mod.problems(path, sections) == ["common.synthetic.K: docstring lacks the line 「定义于 第6章 §6.3.4」"]
    # a section that the outline does not have, next to the right one
    path.write_text(good.replace("    定义于 第6章 §6.3.4\n    \"\"\"\n\n\nclass",
                                 "    定义于 第6章 §6.3.4\n    定义于 第6章 §6.9\n    \"\"\"\n\n\nclass"))
    assert mod.problems(path, sections) == ["common.synthetic.f: 第6章 §6.9 is not a section of the outline"]
    # another section than the module's
    path.write_text(good.replace("第6章 §6.3.4", "第6章 §6.3.2"))
    assert mod.problems(path, sections) == [f"common.synthetic.{name}: docstring lacks the line 「定义于 第6章 §6.3.4」"
                                            for name in ("f", "K")]
    # a module the map does not know
    assert mod.problems(path, {}) == [
        "common.synthetic: not in MODULE_SECTIONS (add its section, or None for a utility)"]
    # a utility says so instead of a section
    tool = pkg / "tool.py"
    tool.write_text('def g():\n    """Why g exists.\n\n    本书无对应章节（工具）\n    """\n')
    assert mod.problems(tool, sections) == []
    tool.write_text('def g():\n    """Why g exists."""\n')
    assert mod.problems(tool, sections) == ["common.tool.g: docstring lacks the line 「本书无对应章节（工具）」"]
