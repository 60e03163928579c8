"""GPU spec table sanity (dense vs sparse, units) and the psutil/NVML monitor."""
import time

import pytest
import torch

from common.gpu_specs import NVLINK_C2C_GBPS_PER_DIRECTION, PCIE_GEN5_X16_GBPS_PER_DIRECTION, SPECS, get_spec
from common.roofline import is_memory_bound
from common.monitor import Monitor


def test_spec_table_consistency():
    assert set(SPECS) == {"A100", "H100", "H200", "B200", "GH200", "GB200"}
    for spec in SPECS.values():
        assert spec.source and spec.price_usd > 0
        ridge, peak, bw = spec.ridge_point(), spec.peak_flops("bf16"), spec.bandwidth
        # the roofline flips from memory- to compute-bound exactly at the ridge point
        assert is_memory_bound(0.99 * ridge, peak, bw) and not is_memory_bound(1.01 * ridge, peak, bw)
        # Tensor Cores: 10-20x the FP32 CUDA cores at bf16 on every generation listed
        assert 10 < spec.bf16_tflops / spec.fp32_tflops < 40
    assert get_spec("H100").fp32_tflops == 67             # not the book's 34 (that is FP64)
    assert 62 < PCIE_GEN5_X16_GBPS_PER_DIRECTION < 64
    assert NVLINK_C2C_GBPS_PER_DIRECTION / PCIE_GEN5_X16_GBPS_PER_DIRECTION == pytest.approx(7.1, abs=0.1)  # not 14x
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
