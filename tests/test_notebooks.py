"""The committed notebooks are what a reader believes: check that they were run as a measurement should be.

Reads every committed notebook (it executes nothing) and fails, naming the notebook and cell, when the run was
on a busy machine, too slow, out of order, errored, or shows the reader something they should never see.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from common.paths import FIGURES_DIR, REPO_ROOT
from common.runinfo import END_TAG, START_TAG, busy_limit

NOTEBOOKS = sorted((REPO_ROOT / "chapters").glob("*/*.ipynb"))
CORES = os.cpu_count() or 2
MAX_LOAD = busy_limit()
MAX_WALL_S_CPU = 180.0
MAX_STDERR = 3
MAX_BYTES = 2_000_000
MACHINE_PATH = re.compile(r"/work/|/tmp/|/home/|/root/|site-packages")
INTERNAL_PROSE = re.compile(r"工程师|engineers?\b|\bnotes/|notes ?勘误|见 ?notes|多名.{0,6}共享|开发会话|dev session",
                            re.IGNORECASE)
LOAD = re.compile(r"load average: ([0-9.]+) \(1 min\)")
WALL = re.compile(r"wall time: ([0-9.]+) s")


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def _figure_hashes() -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in FIGURES_DIR.rglob("*.png")}


def problems_of(nb_path: Path, figure_hashes: set[str]) -> list[str]:
    """Everything wrong with one committed notebook, each naming its cell."""
    problems = []
    if nb_path.stat().st_size > MAX_BYTES:
        problems.append(f"{nb_path.stat().st_size / 1e6:.1f} MB (> {MAX_BYTES / 1e6:.0f} MB): save figures as files")
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for _, c in code]
    for (i, _), n in zip(code, counts):
        if n is None:
            problems.append(f"cell {i}: not executed")
    if None not in counts and counts != list(range(1, len(code) + 1)):
        problems.append(f"cells executed out of order (execution counts {counts})")
    stderr = 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            match = INTERNAL_PROSE.search("".join(cell["source"]))
            if match:
                problems.append(f"cell {i}: markdown speaks about the development itself: {match.group(0)!r}")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"cell {i}: error output {output.get('ename')}: {output.get('evalue', '')[:100]}")
            stderr += output.get("name") == "stderr"
            match = MACHINE_PATH.search(json.dumps({k: v for k, v in output.items() if k != "metadata"}))
            if match and "image/png" not in output.get("data", {}):
                problems.append(f"cell {i}: output shows a machine path ({match.group(0)!r})")
            png = output.get("data", {}).get("image/png")
            if png is not None:
                digest = hashlib.sha256(base64.b64decode("".join(png))).hexdigest()
                if digest not in figure_hashes:
                    problems.append(f"cell {i}: inline figure differs from every file in figures/ "
                                    "(display the saved file with common.paths.show_figure)")
    if stderr > MAX_STDERR:
        problems.append(f"{stderr} stderr outputs (> {MAX_STDERR}): progress bars or warnings, fix at the source")
    problems += _run_problems(code)
    return problems


def _run_problems(code: list[tuple[int, dict]]) -> list[str]:
    """The start/end lines of common.runinfo: present, and saying the machine was quiet and the run short."""
    if not code:
        return ["no code cells"]
    (first_i, first), (last_i, last) = code[0], code[-1]
    start = "".join(_output_text(o) for o in first.get("outputs", []))
    end = "".join(_output_text(o) for o in last.get("outputs", []))
    problems = []
    if START_TAG not in start:
        return [f"cell {first_i}: the first code cell does not call common.runinfo.notebook_start()"]
    if END_TAG not in end:
        return [f"cell {last_i}: the last code cell does not call common.runinfo.notebook_end()"]
    for where, i, text in (("start", first_i, start), ("end", last_i, end)):
        match = LOAD.search(text)
        if match is None:
            problems.append(f"cell {i}: no load average at the {where}")
            continue
        load = float(match.group(1))
        if load > MAX_LOAD:
            problems.append(f"cell {i}: executed at {where} load average {load:.2f} > {MAX_LOAD} on {CORES} cores; "
                            "its timings are noise: re-execute it alone on a quiet machine (make notebook NB=...)")
    wall = WALL.search(end)
    if wall is None:
        problems.append(f"cell {last_i}: no wall time at the end")
    elif "device: cpu" in start and float(wall.group(1)) > MAX_WALL_S_CPU:
        wall = float(wall.group(1))
        problems.append(f"cell {last_i}: wall time {wall:.0f} s > {MAX_WALL_S_CPU:.0f} s on CPU")
    return problems


@pytest.fixture(scope="module")
def figure_hashes() -> set[str]:
    return _figure_hashes()


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_was_run_as_a_measurement(nb_path: Path, figure_hashes: set[str]) -> None:
    problems = problems_of(nb_path, figure_hashes)
    assert not problems, f"{nb_path.relative_to(REPO_ROOT)}:\n  " + "\n  ".join(problems)


def test_checker_catches_a_busy_run(tmp_path: Path) -> None:
    """The checker itself can fail: a notebook run under load, with a path and an error, is rejected."""
    nb = {"cells": [
        {"cell_type": "code", "execution_count": 1, "source": [], "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stdout",
             "text": f"{START_TAG} | device: cpu\n"
                     f"{START_TAG} | load average: 9.10 (1 min), 9.0 (5 min) on 2 cores\n"}]},
        {"cell_type": "markdown", "source": ["另一位工程师在做"], "metadata": {}},
        {"cell_type": "code", "execution_count": 3, "source": [], "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stderr", "text": "/work/x/site-packages/y.py: warning"},
            {"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []},
            {"output_type": "stream", "name": "stdout",
             "text": f"{END_TAG} | load average: 0.50 (1 min), 1.0 (5 min) on 2 cores | wall time: 400.0 s\n"}]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "ch99-x" / "01-x.ipynb"
    path.parent.mkdir()
    path.write_text(json.dumps(nb))
    found = "\n".join(problems_of(path, set()))
    for expected in ("out of order", "工程师", "error output", "machine path",
                     "start load average 9.10", "wall time 400 s"):
        assert expected in found, (expected, found)
