"""GPU spec table sanity (dense vs sparse, units) and the psutil/NVML monitor."""
import time

import pytest
import torch

from common.gpu_specs import SPECS, get_spec
from common.monitor import Monitor


def test_spec_table_consistency():
    assert set(SPECS) == {"A100", "H100", "H200", "B200", "GH200", "GB200"}
    for spec in SPECS.values():
        assert spec.source and spec.price_usd > 0
        assert spec.ridge_point() == pytest.approx(spec.bf16_tflops / spec.hbm_tbps)
    assert get_spec("a100").bf16_tflops == 312            # dense, not "with sparsity"
    assert get_spec("H100").bf16_tflops == pytest.approx(989, rel=0.01)
    gb200 = get_spec("GB200")   # a superchip: two B200 dies, each clocked higher than in HGX B200
    assert gb200.gpus == 2 and gb200.fp4_tflops / 2 > get_spec("B200").fp4_tflops
    with pytest.raises(ValueError):
        get_spec("A100").peak_flops("fp8")
    with pytest.raises(ValueError):
        get_spec("RTX 9090")


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
