"""The machine's load next to a benchmark's numbers: timings taken while other work runs are noise.

`load_snapshot(when)` reads the 1- and 5-minute load averages (common.runinfo.load_average) and the
core count; `load_line(snapshot)` is the line printed next to a table, followed by a WARNING line when
the load says other work competed for the CPU. At the start the limit is the core count; later
(`when` anything but "start") it is cores + 0.5 (as tests/test_notebooks.py), because by then the
load also counts the benchmark's own threads.
"""
from __future__ import annotations

import os

from ..runinfo import busy_limit, load_average


def load_snapshot(when: str = "start") -> dict:
    """The load average now and whether it is too high for timings to mean something.

    本书无对应章节（工具）
    """
    one, five = load_average()
    cores = os.cpu_count() or 1
    limit = float(cores) if when == "start" else busy_limit()
    return {"when": when, "load_1min": round(one, 2), "load_5min": round(five, 2), "cores": cores,
            "limit": limit, "too_busy": one > limit}


def load_line(snapshot: dict, prefix: str = "[bench]") -> str:
    """'[bench] machine load at start: 0.52 (1 min), 0.40 (5 min) on 2 cores' (+ a WARNING line if busy).

    本书无对应章节（工具）
    """
    text = (f"{prefix} machine load at {snapshot['when']}: {snapshot['load_1min']:.2f} (1 min), "
            f"{snapshot['load_5min']:.2f} (5 min) on {snapshot['cores']} cores")
    if snapshot["too_busy"]:
        text += (f"\n{prefix} WARNING: load {snapshot['load_1min']:.2f} at {snapshot['when']} exceeds "
                 f"{snapshot['limit']:g} on {snapshot['cores']} cores: other work was competing for the CPU, "
                 "so these timings are unreliable. Rerun on a quiet machine (python -m common.runinfo wait).")
    return text


def load_block(start: dict, end: dict, prefix: str = "[bench]") -> str:
    """Both lines, start then end, for printing beside a results table.

    本书无对应章节（工具）
    """
    return load_line(start, prefix) + "\n" + load_line(end, prefix)
