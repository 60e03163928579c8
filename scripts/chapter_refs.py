"""Which chapter/section of the book each public function or class in common/ implements, as its docstrings say.

    .venv/bin/python scripts/chapter_refs.py            # table: name, where the reference was found, reference
    .venv/bin/python scripts/chapter_refs.py --missing  # only the names whose own docstring names no section

A reference is "§3.2.7", "第 5 章", "chapter 6" / "ch06". Found in the object's own docstring ("own"), else in
its module's docstring ("module", the chapter of the whole file), else "missing". The list is what a
「定义于 第N章 §x」 line in each docstring would be written from (d2l's "Defined in §…").
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF = re.compile(r"§\s?\d+(?:\.\d+)*(?:[–-]§?\d+(?:\.\d+)*)?|第\s?\d+\s?章|\b[Cc]hapter\s?\d+\b|\bch\d{2}\b")


def references(text: str | None) -> list[str]:
    """Distinct section/chapter references in `text`, in order of appearance."""
    seen: list[str] = []
    for match in REF.findall(text or ""):
        ref = re.sub(r"\s+", " ", match)
        if ref not in seen:
            seen.append(ref)
    return seen


def public_objects(path: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(qualified name, kind, own references, module references) of each public top-level def/class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    module_refs = references(ast.get_docstring(tree))
    rows = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            rows.append((f"{module}.{node.name}", kind, references(ast.get_docstring(node)), module_refs))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chapter_refs.py")
    parser.add_argument("--missing", action="store_true", help="only names without a reference of their own")
    args = parser.parse_args(argv)
    rows = [row for path in sorted((REPO / "common").rglob("*.py")) if "__pycache__" not in path.parts
            for row in public_objects(path)]
    counts = {"own": 0, "module": 0, "missing": 0}
    for name, kind, own, module_refs in rows:
        source = "own" if own else "module" if module_refs else "missing"
        counts[source] += 1
        if args.missing and source == "own":
            continue
        refs = ", ".join(own or module_refs) or "-"
        print(f"{name:60s} {kind:8s} {source:7s} {refs}")
    print(f"\n{len(rows)} public functions/classes in common/: {counts['own']} name a section in their own docstring, "
          f"{counts['module']} only through their module's docstring, {counts['missing']} missing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
