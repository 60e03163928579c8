"""The psutil/NVML monitor samples while a workload runs."""
import time

import pytest

import torch

from common.hardware.monitor import Monitor


def test_monitor_samples_while_workload_runs():
    mon = Monitor(interval=0.01, force_cpu=True)
    assert mon.backend == "psutil" and "psutil" in mon.describe()
    with mon:
        end = time.perf_counter() + 0.3
        x = torch.randn(256, 256)
        while time.perf_counter() < end:
            x = (x @ x).tanh()
    assert len(mon.samples) >= 5
    times = mon.series("t")
    assert times == sorted(times)
    assert all(s["process_rss_bytes"] > 0 for s in mon.samples)
    assert max(mon.series("process_cpu_percent")) > 0
    with pytest.raises(ValueError):
        Monitor(interval=0)
