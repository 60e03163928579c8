"""The 勘误表: every claim of the book, as a notebook checked it, gathered into ERRATA.md.

A notebook records a claim with `claim(...)` in the cell that computes or measures it. The call shows one
line to the reader and leaves a structured copy in the cell's output (MIME type `CLAIM_MIME`).
`python -m common.errata` reads the committed notebooks and writes ERRATA.md; `--check` fails when the
file is not current (tests/test_errata.py runs it).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from common.paths import REPO_ROOT

CLAIM_MIME = "application/vnd.llm-labs.claim+json"
STATUS = {"ok": "✅ 复现", "erratum": "❌ 勘误", "unmeasurable": "⚠️ 此处无法测量"}
ERRATA_FILE = REPO_ROOT / "ERRATA.md"


@dataclass(frozen=True)
class Claim:
    """One claim of the book: where it is, what it says, what we found, and whether that agrees.

    本书无对应章节（工具）
    """
    where: str      # book location, e.g. "§3.2.1" or "§6.3 表 6-2"
    book: str       # what the book says, quoted or closely paraphrased
    found: str      # the measured or correct value, with units
    status: str     # "ok" | "erratum" | "unmeasurable"
    why: str = ""   # for "unmeasurable": the reason; otherwise an optional short explanation

    def __post_init__(self) -> None:
        if self.status not in STATUS:
            raise ValueError(f"status must be one of {sorted(STATUS)}, got {self.status!r}")
        if self.status == "unmeasurable" and not self.why:
            raise ValueError("an unmeasurable claim needs `why` (for example: needs an H100)")
        for name in ("where", "book", "found"):
            if not getattr(self, name).strip():
                raise ValueError(f"claim field {name!r} is empty")


def claim(where: str, book: str, found: str, status: str, why: str = "") -> None:
    """Record one claim of the book in the notebook's output (and show it to the reader).

    Returns None, so that a claim on a cell's last line shows nothing more than its own line.

    本书无对应章节（工具）
    """
    row = Claim(where, book, found, status, why)
    line = f"{STATUS[status]} {where}: 书中「{book}」→ {found}" + (f"（{why}）" if why else "")
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: just print
        print(line)
        return
    if get_ipython() is None:
        print(line)
    else:
        display({"text/plain": line, CLAIM_MIME: asdict(row)}, raw=True)


def _chapter_of(notebook: Path) -> int:
    return int(notebook.parent.name[2:4])


def collect(root: Path = REPO_ROOT) -> list[tuple[Path, int, Claim]]:
    """Every claim in the committed notebooks under chapters/: (notebook, cell index, claim).

    本书无对应章节（工具）
    """
    rows = []
    for nb_path in sorted((root / "chapters").glob("*/*.ipynb")):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            for output in cell.get("outputs", []):
                data = output.get("data", {}).get(CLAIM_MIME)
                if data is not None:
                    rows.append((nb_path.relative_to(root), index, Claim(**data)))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[tuple[Path, int, Claim]]) -> str:
    """ERRATA.md's text: a summary, then one table a chapter.

    本书无对应章节（工具）
    """
    counts = {status: sum(c.status == status for _, _, c in rows) for status in STATUS}
    lines = [
        "# 勘误表 / Errata",
        "",
        "本文件由 `python -m common.errata` 从各章 notebook 中的 `claim(...)` 记录生成，请勿手工编辑。",
        "每一行是书中的一个论断（数字、API、参数或指标名）、我们在真实模型或计算中得到的值，以及结论。",
        "",
        "*English summary:* generated from the `claim(...)` records in the chapter notebooks (do not edit by hand). "
        "Each row is one claim of the book, the value we measured or computed, and a status: "
        "✅ reproduced, ❌ erratum (corrected value given), ⚠️ not measurable on this machine (reason given).",
        "",
        "Notebook 一列的 cell N 是 notebook 中从 0 数起的单元格序号（markdown 与代码单元格都计入）。",
        "",
        "| 状态 | 条数 |",
        "|---|---|",
        *(f"| {STATUS[s]} | {n} |" for s, n in counts.items()),
        f"| 合计 | {len(rows)} |",
    ]
    for chapter in sorted({_chapter_of(nb) for nb, _, _ in rows}):
        lines += ["", f"## 第 {chapter} 章", "", "| 书中位置 | 书中说法 | 实测 / 正确值 | 状态 | Notebook |",
                  "|---|---|---|---|---|"]
        for nb, index, c in rows:
            if _chapter_of(nb) != chapter:
                continue
            status = STATUS[c.status] + (f"：{_cell(c.why)}" if c.why else "")
            link = f"[{nb.parent.name}/{nb.name} · cell {index}]({nb.as_posix()})"
            lines.append(f"| {_cell(c.where)} | {_cell(c.book)} | {_cell(c.found)} | {status} | {link} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m common.errata`: regenerate ERRATA.md from the notebooks, or check it is current.

    本书无对应章节（工具）
    """
    parser = argparse.ArgumentParser(prog="python -m common.errata", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if ERRATA.md is not current")
    args = parser.parse_args(argv)
    rows = collect()
    text = render(rows)
    if args.check:
        current = ERRATA_FILE.read_text(encoding="utf-8") if ERRATA_FILE.exists() else ""
        if current != text:
            print("ERRATA.md is not current: run `python -m common.errata`", file=sys.stderr)
            return 1
        print("ERRATA.md is current")
        return 0
    ERRATA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote ERRATA.md: {len(rows)} claims")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
