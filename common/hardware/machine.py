"""Measure this machine: peak matmul FLOP/s per dtype and memory bandwidth, in seconds.

Book numbers for GPUs are datasheet peaks; here every roofline is built from what the
current device actually does, measured now. Results are cached per machine under .cache/.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch

from ..device import pick_device, synchronize
from ..paths import CACHE_DIR
from ..runinfo import load_average


def best_time(fn, repeats: int, device: torch.device | str) -> float:
    """Seconds of fn()'s fastest call out of `repeats` (after one warm-up call).

    定义于 第3章 §3.2.4
    """
    fn()  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def best_total_time(fns: list, rounds: int, device: torch.device) -> float:
    """Sum over `fns` of each one's best time in `rounds` interleaved passes.

    On a machine shared with other processes a long timed span is almost always preempted;
    short spans (one chunk, one layer) often are not, so best-per-piece summed is a far steadier
    estimate of the undisturbed total. Pieces run in order each round, so a piece streamed from
    memory is cold again when its turn comes (as long as the total exceeds the caches).

    定义于 第3章 §3.2.4
    """
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()  # warm-up
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return sum(best)


def measure_matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                         device: str | torch.device | None = None, repeats: int = 5) -> float:
    """Sustained FLOP/s of an n×n×n matmul (2n³ FLOPs), best of `repeats`.

    On CPU n=512 (about a millisecond per call) so that a best-of run usually gets one undisturbed call.

    定义于 第3章 §3.2.4
    """
    device = pick_device(device)
    n = n or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats, device)


BANDWIDTH_KINDS = ("copy", "read")


def measure_memory_bandwidth(nbytes: int | None = None, device: str | torch.device | None = None,
                             repeats: int = 5, kind: str = "copy") -> float:
    """Bytes/s of streaming a buffer of `nbytes` (far larger than the caches), best of `repeats`.

    kind="copy": dst.copy_(src); counts read + write, i.e. 2·nbytes per pass (STREAM "copy").
    kind="read": src.sum(); counts nbytes (a read-only stream, what decode does to its weights).
    Both are lower bounds of the hardware's bandwidth; on a busy machine take the larger.

    定义于 第3章 §3.2.4
    """
    if kind not in BANDWIDTH_KINDS:
        raise ValueError(f"kind must be one of {BANDWIDTH_KINDS}, got {kind!r}")
    device = pick_device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
    if nbytes < 4:
        raise ValueError(f"nbytes must be >= 4, got {nbytes}")
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    if device.type == "cuda":
        fn = (lambda: src.sum()) if kind == "read" else (lambda: dst.copy_(src))
        seconds = best_time(fn, repeats, device)
    else:  # 4 MiB pieces: see best_total_time
        piece = (4 << 20) // 4
        pieces = [(src[i:i + piece], dst[i:i + piece]) for i in range(0, src.numel(), piece)]
        fns = [(lambda s=s_: s.sum()) if kind == "read" else (lambda s=s_, d=d_: d.copy_(s)) for s_, d_ in pieces]
        seconds = best_total_time(fns, repeats, device)
    return (nbytes if kind == "read" else 2 * nbytes) / seconds


def measure_fp8_flops(n: int = 8192, device: str | torch.device | None = None, repeats: int = 5) -> float | None:
    """FP8 (e4m3) matmul FLOP/s on GPUs with FP8 Tensor Cores (compute capability >= 8.9), else None.

    定义于 第3章 §3.2.4
    """
    device = pick_device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return None
    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
    one = torch.ones((), device=device)
    return 2 * n**3 / best_time(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one,
                                                           out_dtype=torch.bfloat16), repeats, device)


@dataclass
class DevicePeaks:
    """Measured peak FLOP/s per dtype and memory bandwidth of one device: the roofline's inputs.

    定义于 第3章 §3.2.4
    """
    device: str
    name: str
    flops: dict[str, float]          # dtype name -> FLOP/s
    bandwidth: float                 # bytes/s: the best of the streams in bandwidth_detail
    threads: int
    bandwidth_detail: dict[str, float] = field(default_factory=dict)  # "copy (r+w)", "read" -> bytes/s

    def ridge_point(self, dtype: str = "bfloat16") -> float:
        """Arithmetic intensity (FLOP/byte) where compute time equals memory time."""
        return self.flops[dtype] / self.bandwidth


def device_name(device: torch.device) -> str:
    """A readable name for `device` (the GPU's name or the CPU's).

    定义于 第3章 §3.2.4
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure_peaks(device: str | torch.device | None = None, refresh: bool = False) -> DevicePeaks:
    """Peaks of the current device, measured once and cached per machine and thread count.

    A measurement taken while other work loads the CPU (1-minute load average above half the cores) is
    returned but never cached: a busy-machine number would otherwise stand in for the machine's peak.

    定义于 第3章 §3.2.4
    """
    device = pick_device(device)
    quiet = load_average()[0] < 0.5 * (os.cpu_count() or 1)
    key = f"{platform.node()}-{device.type}-{torch.get_num_threads()}t-v2"
    cache_file = CACHE_DIR / "peaks" / f"{key}.json"
    if cache_file.exists() and not refresh:
        return DevicePeaks(**json.loads(cache_file.read_text()))
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    repeats = 5 if device.type == "cuda" else 30  # CPU runs share cores: more tries, keep the best
    flops = {str(d).removeprefix("torch."): measure_matmul_flops(d, device=device, repeats=repeats) for d in dtypes}
    fp8 = measure_fp8_flops(device=device)
    if fp8 is not None:
        flops["float8_e4m3fn"] = fp8
    detail = {"copy (r+w)": measure_memory_bandwidth(device=device, repeats=repeats, kind="copy"),
              "read": measure_memory_bandwidth(device=device, repeats=repeats, kind="read")}
    peaks = DevicePeaks(device=device.type, name=device_name(device), flops=flops,
                        bandwidth=max(detail.values()), threads=torch.get_num_threads(), bandwidth_detail=detail)
    if device.type == "cpu" and not quiet:
        return peaks
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(peaks), indent=1))
    os.replace(tmp, cache_file)
    return peaks


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where the file does not exist).

    定义于 第3章 §3.2.4
    """
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def single_thread_if_busy(device: torch.device | str = "cpu") -> str:
    """On a CPU whose load average exceeds its core count, use one torch thread.

    A multi-threaded OpenMP region waits for its slowest thread; when other processes hold the
    cores, every small op then costs a scheduler time slice (we measured decode 20x slower).
    Returns one line saying what was chosen.

    定义于 第3章 §3.2.4
    """
    load = load_average()[0]
    cores = os.cpu_count() or 1
    busy = torch.device(device).type == "cpu" and load > cores
    if busy:
        torch.set_num_threads(1)
    return (f"device={torch.device(device).type}, torch threads={torch.get_num_threads()}, "
            f"load average {load:.1f} on {cores} cores" + (" -> busy machine: single-threaded" if busy else ""))


def last_level_cache_bytes(device: str | torch.device | None = None) -> int:
    """Size of the last cache in front of memory: the CPU's highest-level cache (sysfs), a GPU's L2.

    Falls back to 32 MiB where the OS does not say. A stream of weights meant to be read from
    memory, not from cache, must be several times larger than this.

    定义于 第3章 §3.2.4
    """
    device = pick_device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    best_level, size = -1, 32 << 20
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            with open(f"{root}/{entry}/level") as fh:
                level = int(fh.read())
            with open(f"{root}/{entry}/size") as fh:
                text = fh.read().strip().upper()
            value = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            if level > best_level:
                best_level, size = level, value
    except (OSError, ValueError):
        pass
    return size
