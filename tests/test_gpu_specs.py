"""GPU spec table sanity (dense vs sparse, units)."""
import pytest


from common.hardware.gpu_specs import NVLINK_C2C_GBPS_PER_DIRECTION, PCIE_GEN5_X16_GBPS_PER_DIRECTION, SPECS, get_spec
from common.hardware.roofline import MatmulShape, is_memory_bound


def test_spec_table_consistency():
    assert set(SPECS) == {"A100", "H100", "H200", "B200", "GH200", "GB200"}
    for spec in SPECS.values():
        assert spec.source and spec.price_usd > 0
        ridge, peak, bw = spec.ridge_point(), spec.peak_flops("bf16"), spec.bandwidth
        # the ridge found where a real matmul's time flips: a decode GEMM [b, d] @ [d, d] in bf16 has intensity
        # b / (1 + 2b/d), so it turns compute-bound at b* = ridge / (1 - 2 ridge / d); the ridge only enters
        # through that crossing, the shape's FLOPs and bytes are counted independently by MatmulShape
        d = 16384
        knee = ridge / (1 - 2 * ridge / d)
        below, above = MatmulShape(int(0.98 * knee), d, d), MatmulShape(int(1.02 * knee) + 1, d, d)
        assert below.bytes_moved / bw > below.flops / peak and is_memory_bound(below.intensity, peak, bw)
        assert above.flops / peak > above.bytes_moved / bw and not is_memory_bound(above.intensity, peak, bw)
    # published ridge points (datasheet dense BF16 TFLOPS / HBM TB/s, computed by hand): A100 SXM 312 / 2.039,
    # H100 SXM 989 / 3.35, H200 989 / 4.8
    for name, flop_per_byte in [("A100", 153.0), ("H100", 295.2), ("H200", 206.0)]:
        assert get_spec(name).ridge_point() == pytest.approx(flop_per_byte, rel=0.005)
    for spec in SPECS.values():
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
