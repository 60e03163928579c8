"""`make site`: a static HTML site of the results, readable without running anything and without GitHub's viewer.

    python -m common.site [--out .cache/site]

Pages: index.html (chapter index: every chapter's notebooks with their titles, the 勘误表, the labs),
chapters/<chNN-topic>/<NN-name>.html (the committed, executed notebooks through nbconvert's HTML exporter,
figures embedded), errata.html (ERRATA.md) and labs/labN.html (each lab's instructions: the docstrings and
stubs of its exercises.py). Self-contained on purpose: no script, style or font from a CDN (cdnjs and unpkg are
slow or blocked for many readers of a Chinese book, and a copy of the site must work offline), so formulas
stay as their TeX source and progress-bar widgets show their text form.
"""
from __future__ import annotations

import argparse
import ast
import html
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .paths import CACHE_DIR, REPO_ROOT, relative_to_repo

DEFAULT_OUT = CACHE_DIR / "site"
CHAPTER_TITLES = {3: "GPU 基础", 5: "推理基础", 6: "KV Cache", 7: "调度", 8: "量化", 9: "投机解码",
                  10: "部署", 11: "进阶专题"}
STYLE = """<style>
body{font-family:-apple-system,"Segoe UI","PingFang SC","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
max-width:980px;margin:2em auto;padding:0 1em;line-height:1.6;color:#222}
a{color:#0b5cad}table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top}pre{background:#f6f8fa;padding:.8em;overflow-x:auto}code{background:#f6f8fa}
nav.site{font-size:90%;margin-bottom:1em}
</style>"""
NAV = '<nav class="site"><a href="{root}index.html">← 目录 / Index</a></nav>'
_EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>')
_IPYNB_LINK = re.compile(r'href="([^"#:]+)\.ipynb(#[^"]*)?"')


@dataclass
class NotebookEntry:
    """One executed notebook of the site: its path and title.

    本书无对应章节（工具）
    """
    path: Path          # repo-relative .ipynb
    title: str

    @property
    def page(self) -> str:
        return self.path.with_suffix(".html").as_posix()


@dataclass
class ChapterEntry:
    """One chapter of the site: its number, folder and notebooks.

    本书无对应章节（工具）
    """
    number: int
    folder: str
    notebooks: list[NotebookEntry] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"第 {self.number} 章 {CHAPTER_TITLES.get(self.number, self.folder.split('-', 1)[-1])}"


def notebook_title(nb) -> str:
    """The first markdown heading of a notebook (its title as the reader sees it).

    本书无对应章节（工具）
    """
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def find_chapters(repo: Path = REPO_ROOT) -> list[ChapterEntry]:
    """Every chapter folder with its notebooks, in book order.

    本书无对应章节（工具）
    """
    import nbformat

    chapters = []
    for folder in sorted((repo / "chapters").glob("ch[0-9][0-9]-*")):
        entry = ChapterEntry(int(folder.name[2:4]), folder.name)
        for nb_path in sorted(folder.glob("*.ipynb")):
            nb = nbformat.read(nb_path, as_version=4)
            entry.notebooks.append(NotebookEntry(nb_path.relative_to(repo), notebook_title(nb) or nb_path.stem))
        if entry.notebooks:
            chapters.append(entry)
    return chapters


def page(title: str, body: str, root: str | None) -> str:
    """A page with the site's style and, below the index (root is not None), a link back to it.

    本书无对应章节（工具）
    """
    nav = "" if root is None else NAV.format(root=root)
    return (f'<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"{STYLE}</head><body>{nav}{body}</body></html>\n")


def _link_notebooks_as_pages(text: str) -> str:
    """Links to .ipynb files point at their .html pages on the site."""
    return _IPYNB_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', text)


def notebook_html(nb_path: Path, root: str) -> str:
    """One executed notebook as a self-contained page (figures are data URIs in the outputs).

    本书无对应章节（工具）
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata.pop("widgets", None)         # widget state would pull the renderer from a CDN
    for cell in nb.cells:                    # widget views fall back to their text form
        for out in cell.get("outputs", []):
            out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    exporter = HTMLExporter(template_name="lab", mathjax_url="", require_js_url="", widget_renderer_url="",
                            jquery_url="")
    body, _ = exporter.from_notebook_node(nb)
    body = _EMPTY_SCRIPT.sub("", body)     # the exporter leaves <script src=""> for the emptied URLs
    body = body.replace("<body", "<body data-site-page=\"notebook\"", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + NAV.format(root=root), body, count=1)
    return _link_notebooks_as_pages(body)


def markdown_html(text: str) -> str:
    """Markdown rendered to HTML, with links to notebooks pointing at their pages.

    本书无对应章节（工具）
    """
    import mistune

    return _link_notebooks_as_pages(mistune.create_markdown(plugins=["table", "strikethrough", "url"])(text))


def lab_html(lab_dir: Path) -> str:
    """A lab's instructions: the module docstring, then each function/class with its docstring, then the file.

    本书无对应章节（工具）
    """
    source = (lab_dir / "exercises.py").read_text()
    tree = ast.parse(source)
    parts = [f"<h1>{html.escape(lab_dir.name)}</h1>",
             markdown_html(ast.get_docstring(tree) or ""),
             f"<p>运行 / run: <code>make lab-{lab_dir.name.removeprefix('lab')}</code></p>",
             "<h2>任务 / Tasks</h2><ul>"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            doc = html.escape(ast.get_docstring(node) or "")
            parts.append(f"<li><code>{html.escape(node.name)}</code><pre>{doc}</pre></li>")
    parts.append(f"</ul><h2>exercises.py</h2><pre>{html.escape(source)}</pre>")
    return "\n".join(parts)


def index_html(chapters: list[ChapterEntry], labs: list[str]) -> str:
    """The site's index page: chapters, notebooks, errata and labs.

    本书无对应章节（工具）
    """
    parts = ["<h1>《LLM推理优化实战》配套实验室：结果</h1>",
             "<p>每章已执行的 notebook（输出与图均来自提交的运行）、勘误表与实验说明。"
             "<br><i>Executed notebooks of every chapter, the errata and the lab instructions.</i></p>",
             '<p><a href="errata.html">勘误表 / Errata</a></p>', "<h2>章节 / Chapters</h2>"]
    for ch in chapters:
        parts.append(f'<h3 id="ch{ch.number:02d}">{html.escape(ch.title)}</h3><ul>')
        parts += [f'<li><a href="{nb.page}">{html.escape(nb.path.stem)}</a> {html.escape(nb.title)}</li>'
                  for nb in ch.notebooks]
        parts.append("</ul>")
    parts.append("<h2>实验 / Labs</h2><ul>")
    parts += [f'<li><a href="labs/{lab}.html">{lab}</a></li>' for lab in labs]
    parts.append("</ul>")
    return page("《LLM推理优化实战》配套实验室", "\n".join(parts), None)


def build_site(out: Path = DEFAULT_OUT, repo: Path = REPO_ROOT) -> list[Path]:
    """Write the whole site into `out` (emptied first); returns the pages written.

    本书无对应章节（工具）
    """
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    written: list[Path] = []

    def write(rel: str, text: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)

    chapters = find_chapters(repo)
    for ch in chapters:
        for nb in ch.notebooks:
            write(nb.page, notebook_html(repo / nb.path, root="../../"))
    errata = repo / "ERRATA.md"
    # ERRATA.md links notebooks relative to the repository root: the same layout as the site
    write("errata.html", page("勘误表 / Errata", markdown_html(errata.read_text(encoding="utf-8")), ""))
    labs = sorted(p.name for p in (repo / "labs").glob("lab[0-9]*") if (p / "exercises.py").exists())
    for lab in labs:
        write(f"labs/{lab}.html", page(lab, lab_html(repo / "labs" / lab), "../"))
    write("index.html", index_html(chapters, labs))
    return written


def main(argv: list[str] | None = None) -> int:
    """`make site`: build the static site and print where its pages went.

    本书无对应章节（工具）
    """
    parser = argparse.ArgumentParser(prog="python -m common.site", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    pages = build_site(Path(args.out))
    print(f"site: {len(pages)} pages in {relative_to_repo(args.out)}/ (open index.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
