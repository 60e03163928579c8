"""Measure this machine: peak matmul FLOP/s per dtype and memory bandwidth, in seconds.

Book numbers for GPUs are datasheet peaks; here every roofline is built from what the
current device actually does, measured now. Results are cached per machine under .cache/.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from .device import pick_device, synchronize
from .paths import CACHE_DIR


def _best_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                         device: str | torch.device | None = None, repeats: int = 5) -> float:
    """Sustained FLOP/s of an n×n×n matmul (2n³ FLOPs), best of `repeats`."""
    device = pick_device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _best_time(lambda: a @ b, repeats, device)


def measure_memory_bandwidth(nbytes: int | None = None, device: str | torch.device | None = None,
                             repeats: int = 5) -> float:
    """Bytes/s of a large copy (it reads and writes `nbytes` each, so 2·nbytes move)."""
    device = pick_device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_time(lambda: dst.copy_(src), repeats, device)


@dataclass
class DevicePeaks:
    device: str
    name: str
    flops: dict[str, float]          # dtype name -> FLOP/s
    bandwidth: float                 # bytes/s
    threads: int

    def ridge_point(self, dtype: str = "bfloat16") -> float:
        """Arithmetic intensity (FLOP/byte) where compute time equals memory time."""
        return self.flops[dtype] / self.bandwidth


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure_peaks(device: str | torch.device | None = None, refresh: bool = False) -> DevicePeaks:
    """Peaks of the current device, measured once and cached per machine and thread count."""
    device = pick_device(device)
    key = f"{platform.node()}-{device.type}-{torch.get_num_threads()}t"
    cache_file = CACHE_DIR / "peaks" / f"{key}.json"
    if cache_file.exists() and not refresh:
        return DevicePeaks(**json.loads(cache_file.read_text()))
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    peaks = DevicePeaks(device=device.type, name=device_name(device),
                        flops={str(d).removeprefix("torch."): measure_matmul_flops(d, device=device) for d in dtypes},
                        bandwidth=measure_memory_bandwidth(device=device), threads=torch.get_num_threads())
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(peaks), indent=1))
    os.replace(tmp, cache_file)
    return peaks


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
