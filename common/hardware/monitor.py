"""Watch the device while a workload runs (§3.4): NVML on an NVIDIA GPU, psutil otherwise.

`with Monitor() as mon: work()` samples in a background thread every `interval` seconds;
`mon.samples` then holds one dict per sample. Same reading either way: is the device busy
(utilization), how full is its memory, and (GPU only) how much power it draws.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil


def _nvml_handle(index: int):
    """An NVML device handle, or None when there is no NVIDIA driver/GPU."""
    try:
        import pynvml
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() <= index:
            return None
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no library, no driver, no device: all mean "no NVML here"
        return None


class Monitor:
    """Background sampler of GPU (NVML) or CPU (psutil) utilization and memory.

    定义于 第3章 §3.4.3
    """

    def __init__(self, interval: float = 0.05, gpu_index: int = 0, force_cpu: bool = False) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self.handle = None if force_cpu else _nvml_handle(gpu_index)
        self.backend = "nvml" if self.handle is not None else "psutil"
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self.t0: float | None = None  # perf_counter() at start; sample "t" is seconds since then

    def now(self) -> float:
        """Seconds since start, on the samples' clock (to mark phases of the workload)."""
        if self.t0 is None:
            raise RuntimeError("monitor not started")
        return time.perf_counter() - self.t0

    def describe(self) -> str:
        """One line saying what is sampled."""
        if self.backend == "nvml":
            import pynvml
            return f"NVML: sampling GPU {pynvml.nvmlDeviceGetName(self.handle)} every {self.interval * 1e3:.0f} ms"
        return (f"no NVIDIA GPU (NVML unavailable): sampling CPU ({psutil.cpu_count()} logical cores) "
                f"and memory with psutil every {self.interval * 1e3:.0f} ms")

    def _sample(self, t0: float) -> dict[str, float]:
        row: dict[str, float] = {"t": time.perf_counter() - t0}
        if self.backend == "nvml":
            import pynvml
            util = pynvml.nvmlDeviceGetUtilizationRates(self.handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(self.handle)
            row.update(util_percent=float(util.gpu), mem_used_bytes=float(mem.used),
                       mem_total_bytes=float(mem.total),
                       power_w=pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0)
        else:
            vm = psutil.virtual_memory()
            row.update(util_percent=psutil.cpu_percent(interval=None),
                       process_cpu_percent=self._process.cpu_percent(interval=None),
                       mem_used_bytes=float(vm.total - vm.available), mem_total_bytes=float(vm.total),
                       process_rss_bytes=float(self._process.memory_info().rss))
        return row

    def _run(self, t0: float) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample(t0))
            self._stop.wait(self.interval)

    def start(self) -> "Monitor":
        if self._thread is not None:
            raise RuntimeError("monitor already started")
        if self.backend == "psutil":  # first call primes psutil's counters (it returns 0.0)
            psutil.cpu_percent(interval=None)
            self._process.cpu_percent(interval=None)
        self.t0 = t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(t0,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, float]]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return self.samples

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def series(self, key: str) -> list[float]:
        return [row[key] for row in self.samples if key in row]


def plot_samples(monitor: Monitor, path: str | Path | None = None, marks: dict[str, float] | None = None):
    """Utilization and memory over time (plus power on a GPU); `marks` draws labelled vertical lines.

    定义于 第3章 §3.4.3
    """
    import matplotlib.pyplot as plt

    t = monitor.series("t")
    panels = 3 if monitor.backend == "nvml" else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.2 * panels), sharex=True)
    who = "GPU" if monitor.backend == "nvml" else "CPU (all cores)"
    axes[0].plot(t, monitor.series("util_percent"), label=f"{who} utilization")
    if monitor.backend == "psutil":
        axes[0].plot(t, monitor.series("process_cpu_percent"), label="this process (100% = one core)")
    axes[0].set_ylabel("%")
    axes[0].legend(loc="lower right", fontsize=8)
    mem_key = "mem_used_bytes" if monitor.backend == "nvml" else "process_rss_bytes"
    axes[1].plot(t, [v / 2**20 for v in monitor.series(mem_key)])
    axes[1].set_ylabel("GPU memory used (MiB)" if monitor.backend == "nvml" else "process RSS (MiB)")
    if panels == 3:
        axes[2].plot(t, monitor.series("power_w"))
        axes[2].set_ylabel("power (W)")
    axes[-1].set_xlabel("seconds")
    for name, at in (marks or {}).items():
        for ax in axes:
            ax.axvline(at, color="gray", ls="--", lw=0.8)
        axes[0].annotate(name, (at, axes[0].get_ylim()[1]), fontsize=8, va="top")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig
