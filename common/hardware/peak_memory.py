"""Peak memory allocated while a function runs, on CPU or GPU.

On CUDA the allocator keeps the statistic; on CPU we replay the profiler's allocation events
(each carries the running "Total Allocated" since the profile started). Both report bytes
allocated *during* the call, on top of what already existed (weights, caches made before).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Callable, Iterator

import torch

from ..device import pick_device, synchronize


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Kineto (torch's C++ profiler) prints `USDT ... profiler_start/stop` to file descriptor 2 whatever
    KINETO_LOG_LEVEL says. Point fd 2 at /dev/null only while the profiler starts and stops, so those two
    lines never reach a notebook; errors raised by the profiled function itself are not hidden.

    定义于 第3章 §3.3
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_allocated(fn: Callable[[], Any], device: str | torch.device | None = None) -> tuple[int, Any]:
    """(peak extra bytes allocated while fn() ran, fn's result).

    定义于 第3章 §3.3
    """
    device = pick_device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, result
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_native_stderr():
        prof.start()
    try:
        result = fn()
    finally:
        with quiet_native_stderr():
            prof.stop()
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0]
    return max(totals, default=0), result
