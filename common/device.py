"""Device and dtype choices made at run time, and a timer that waits for the device."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else CPU.

    Apple MPS is never chosen by default, even when `torch.backends.mps.is_available()`: its kernels give
    results that differ from the CPU's (the book's numbers are CPU and CUDA), so a Mac runs on the CPU unless
    the caller asks for `pick_device("mps")` explicitly.

    本书无对应章节（工具）
    """
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype name ("bfloat16", "fp32", ...) or torch.dtype as a torch.dtype, with a clear error otherwise.

    本书无对应章节（工具）
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so that wall-clock timings mean something on a GPU.

    本书无对应章节（工具）
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def is_cuda(device: torch.device | str) -> bool:
    """Whether `device` is a CUDA device (timers must then synchronize).

    本书无对应章节（工具）
    """
    return torch.device(device).type == "cuda"


def scaled(cpu_value: int, cuda_value: int, device: torch.device | str | None = None) -> int:
    """Pick a workload size by device: small on CPU, larger on a GPU.

    本书无对应章节（工具）
    """
    return cuda_value if is_cuda(pick_device(device)) else cpu_value


@contextmanager
def timed(device: torch.device | str = "cpu") -> Iterator[dict]:
    """`with timed(dev) as t: ...` then `t["s"]` holds the elapsed seconds.

    本书无对应章节（工具）
    """
    result: dict = {}
    synchronize(device)
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result["s"] = time.perf_counter() - start


def use_triton_interpreter_without_cuda(importer: str) -> None:
    """Without CUDA, run Triton kernels in its interpreter (TRITON_INTERPRET=1). Triton 3.9 reads the variable
    when its own standard library is first @jit-decorated, i.e. at `import triton`: call this before that import,
    and it refuses (ImportError naming `importer`) if triton was already imported without the variable.

    本书无对应章节（工具）
    """
    if torch.cuda.is_available():
        return
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise ImportError("triton was imported before TRITON_INTERPRET=1 was set (by torch.compile or the profiler?): "
                          f"import {importer} first, or set TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
