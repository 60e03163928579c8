"""common.site (the static site) on a small synthetic repository, and common.site_check in headless Chromium.

The browser test runs wherever Chromium is installed (`make site-test` installs it); with SITE_TEST=1 set (as
`make site-test` does) a missing Chromium is a failure, not a skip."""
from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import nbformat
import pytest

from common.site import build_site, find_chapters
from common.site_check import check_site, find_chromium

LINK = re.compile(r'(?:href|src)="([^"]+)"')


def _png() -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory) -> Path:
    """chapters/ch03-x/{01-a,02-b}.ipynb (a figure, a widget bar, a link), ERRATA.md, labs/lab3/exercises.py."""
    repo = tmp_path_factory.mktemp("repo")
    folder = repo / "chapters" / "ch03-gpu-basics"
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("show_figure(fig)", execution_count=1)
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                                     "version_minor": 0},
                        "text/plain": "100%|##########| 4/4"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# 3.1 标题 roofline\n\n见 [下一节](02-b.ipynb)，公式 $a^2$"), code]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nbformat.write(nb, folder / "01-a.ipynb")
    nb2 = nbformat.v4.new_notebook()
    nb2.cells = [nbformat.v4.new_markdown_cell("# 3.2 第二节")]
    nbformat.write(nb2, folder / "02-b.ipynb")
    (repo / "ERRATA.md").write_text("# 勘误表\n\n| 位置 | Notebook |\n|---|---|\n"
                                    "| §3.1 | [01-a](chapters/ch03-gpu-basics/01-a.ipynb) |\n", encoding="utf-8")
    (repo / "labs" / "lab3").mkdir(parents=True)
    (repo / "labs" / "lab3" / "exercises.py").write_text(
        '"""Lab 3: memory arithmetic."""\n\n\ndef weights_bytes(params):\n    """Bytes of the weights."""\n'
        '    raise NotImplementedError\n')
    return repo


@pytest.fixture(scope="module")
def mini_site(mini_repo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build_site(out, mini_repo)
    return out


def test_chapter_index_reads_titles(mini_repo):
    [chapter] = find_chapters(mini_repo)
    assert chapter.number == 3 and chapter.title.startswith("第 3 章")
    assert [(nb.path.name, nb.title) for nb in chapter.notebooks] == [("01-a.ipynb", "3.1 标题 roofline"),
                                                                      ("02-b.ipynb", "3.2 第二节")]


def test_every_page_and_link_exists_and_nothing_is_external(mini_site):
    pages = sorted(p.relative_to(mini_site).as_posix() for p in mini_site.rglob("*.html"))
    assert pages == ["chapters/ch03-gpu-basics/01-a.html", "chapters/ch03-gpu-basics/02-b.html", "errata.html",
                     "index.html", "labs/lab3.html"]
    for rel in pages:
        text = (mini_site / rel).read_text(encoding="utf-8")
        for target in LINK.findall(text):
            assert not target.startswith(("http:", "https:", "//")), f"{rel} loads {target}"
            if target.startswith(("data:", "#")) or not target:
                continue
            path = (mini_site / rel).parent / target.split("#")[0]
            assert path.exists(), f"{rel} links to missing {target}"
        assert '<script src="">' not in text
    nb_page = (mini_site / "chapters/ch03-gpu-basics/01-a.html").read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in nb_page and 'href="02-b.html"' in nb_page
    assert "widget-view+json" not in nb_page and "100%|##########| 4/4" in nb_page
    assert "$a^2$" in nb_page          # formulas stay as TeX: no MathJax from a CDN
    assert "weights_bytes" in (mini_site / "labs/lab3.html").read_text(encoding="utf-8")


def _require_chromium() -> str:
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("SITE_TEST") == "1":
            pytest.fail("SITE_TEST=1 but Chromium is missing (scripts/setup_browser.sh installs it)")
        pytest.skip("Chromium not installed (make site-test installs it)")
    return chromium


def test_pages_render_in_headless_chromium(mini_site, tmp_path):
    _require_chromium()
    reports = check_site(mini_site, ["index.html", "chapters/ch03-gpu-basics/01-a.html"], tmp_path / "shots")
    for r in reports:
        assert r.ok, (r.page, r.errors, r.broken_images)
        assert r.screenshot.stat().st_size > 1000
    assert len(reports[1].images) == 1 and reports[1].images[0]["naturalWidth"] > 0


def test_checker_catches_a_broken_image_and_a_script_error(tmp_path):
    _require_chromium()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>ok</body></html>")
    (site / "bad.html").write_text('<html><body><img src="missing.png">'
                                   '<script>undefined_function()</script></body></html>')
    [report] = check_site(site, ["bad.html"], tmp_path / "shots")
    assert not report.ok and len(report.broken_images) == 1
    assert any("undefined_function" in e for e in report.errors)


def test_the_built_site(tmp_path):
    """`make site-test`: the real site in .cache/site (built by `make site`), index and one chapter page."""
    from common.site import DEFAULT_OUT

    if not (DEFAULT_OUT / "index.html").exists():
        if os.environ.get("SITE_TEST") == "1":
            pytest.fail("SITE_TEST=1 but .cache/site is missing: run `make site` first")
        pytest.skip("no site built (make site)")
    _require_chromium()
    from common.site_check import DEFAULT_SHOTS

    reports = check_site(DEFAULT_OUT, shots=DEFAULT_SHOTS)
    assert [r.page for r in reports][0] == "index.html" and len(reports) == 2
    for r in reports:
        assert r.ok, (r.page, r.errors[:5], r.broken_images[:5])
    assert reports[1].images, "a chapter page without any figure: pick one that has figures"
