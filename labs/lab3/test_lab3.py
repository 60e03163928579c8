"""Lab 3 tests: book errata as fixed values, random cases against brute-force oracles, and the
Triton RMSNorm against common.model.layers.RMSNorm (torch) in interpreter mode."""
import random

import pytest
import torch

from common.model.layers import RMSNorm


def test_weights_llama3_70b_is_not_80gb(impl):
    assert impl.weights_bytes(70.6e9, 2) / 1e9 == pytest.approx(141.2)
    assert impl.weights_bytes(8e9, 0.5) == 4e9
    with pytest.raises(ValueError):
        impl.weights_bytes(8e9, 0)


def test_kv_cache_llama2_7b_per_token(impl):
    assert impl.kv_cache_bytes(32, 32, 128, tokens=1) == 524_288         # the book says 16 KB
    assert impl.kv_cache_bytes(32, 8, 128, tokens=8192, batch=4) == 4 * 8192 * 131_072


def test_kv_cache_random_against_loop(impl):
    rng = random.Random(3)
    for _ in range(50):
        layers, kv, d, t, b = (rng.randint(1, 96), rng.randint(1, 16), rng.choice([64, 128]),
                               rng.randint(0, 9000), rng.randint(1, 64))
        e = rng.choice([1, 2, 4])
        expected = 0
        for _layer in range(layers):
            expected += 2 * kv * d * e * t * b    # K and V of every head, every token, every request
        assert impl.kv_cache_bytes(layers, kv, d, t, b, e) == expected


def test_decode_floor_counts_all_layers(impl):
    # Llama-2-7B, 1000 tokens, H100: the book's "16 MB per step" is one layer; 32 layers read 512 MiB
    seconds = impl.decode_floor_seconds(6.74e9, 32, 32, 128, batch=1, context=1000, bandwidth=3.35e12)
    assert seconds == pytest.approx((6.74e9 * 2 + 1000 * 524_288) / 3.35e12)
    rng = random.Random(4)
    for _ in range(20):
        p, L, kv, d = rng.uniform(1e8, 1e11), rng.randint(1, 80), rng.randint(1, 8), 128
        b, c, bw = rng.randint(1, 256), rng.randint(0, 32768), rng.uniform(1e11, 8e12)
        expected = (2 * p + b * c * 2 * L * kv * d * 2) / bw
        assert impl.decode_floor_seconds(p, L, kv, d, b, c, bw) == pytest.approx(expected)
    with pytest.raises(ValueError):
        impl.decode_floor_seconds(1e9, 2, 2, 64, 1, 10, bandwidth=0)


def test_roofline_place_against_times(impl):
    rng = random.Random(5)
    for _ in range(100):
        m, k, n = (rng.randint(1, 8192) for _ in range(3))
        peak, bw, e = rng.uniform(1e11, 2e15), rng.uniform(1e10, 8e12), rng.choice([1, 2, 4])
        intensity, attainable, memory_bound = impl.roofline_place(m, k, n, peak, bw, e)
        flops, bytes_ = 2 * m * k * n, e * (m * k + k * n + m * n)
        assert intensity == pytest.approx(flops / bytes_)
        t_compute, t_memory = flops / peak, bytes_ / bw
        assert memory_bound == (t_memory > t_compute)
        assert attainable == pytest.approx(flops / max(t_compute, t_memory))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 100)])
def test_triton_rmsnorm_matches_torch(impl, shape, dtype, tol):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(sum(shape))
    ref = RMSNorm(shape[-1], 1e-6).to(device)
    ref.weight.data = torch.randn(shape[-1], device=device)
    ref = ref.to(dtype)
    x = torch.randn(*shape, device=device, dtype=dtype)
    out = impl.rmsnorm(x, ref.weight.detach(), 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref(x).detach(), rtol=tol, atol=tol)
    with pytest.raises(ValueError):
        impl.rmsnorm(x, torch.ones(shape[-1] + 1, device=device, dtype=dtype))
