"""Lab 8 tests: random inputs, compared with brute-force oracles written with Python loops."""
import pytest
import torch


def oracle_sym(x, bits):
    qmax = 2 ** (bits - 1) - 1
    out_q, out_s = torch.empty_like(x, dtype=torch.int8), torch.empty(x.shape[0], 1)
    for r in range(x.shape[0]):
        s = max(float(x[r].abs().max()), 1e-12) / qmax
        out_s[r, 0] = s
        for c in range(x.shape[1]):
            out_q[r, c] = int(min(max(torch.round(x[r, c] / s), -qmax - 1), qmax))
    return out_q, out_s


@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_round_trip(impl, bits):
    x = torch.randn(5, 37) * torch.rand(5, 1) * 4
    q, s = impl.symmetric_quantize(x, bits)
    q_ref, s_ref = oracle_sym(x, bits)
    assert q.dtype == torch.int8 and s.shape == (5, 1)
    assert torch.allclose(s.float(), s_ref, rtol=1e-6)
    assert (q.long() - q_ref.long()).abs().max() <= 1 and (q != q_ref).float().mean() < 0.02  # ties may differ
    x_hat = impl.symmetric_dequantize(q, s)
    assert (x_hat - x).abs().max() <= s.max() / 2 + 1e-6


def test_symmetric_rejects_bad_input(impl):
    with pytest.raises(ValueError):
        impl.symmetric_quantize(torch.randn(3, 4, 5), 8)
    with pytest.raises(ValueError):
        impl.symmetric_quantize(torch.randn(3, 4), 12)


@pytest.mark.parametrize("bits", [8, 4])
def test_asymmetric_round_trip(impl, bits):
    x = torch.rand(4, 50) * 6 + 0.5  # all positive: asymmetric shines (zero point at the bottom)
    q, s, z = impl.asymmetric_quantize(x, bits)
    assert int(q.min()) >= 0 and int(q.max()) <= 2 ** bits - 1
    hi = x.amax(1, keepdim=True)
    assert torch.allclose(s.float(), hi / (2 ** bits - 1), rtol=1e-5)  # lo clamps to 0
    assert torch.equal(z.float(), torch.zeros_like(z.float()))
    x_hat = impl.asymmetric_dequantize(q, s, z)
    assert (x_hat - x).abs().max() <= s.max() / 2 + 1e-5
    y = torch.randn(4, 50) - 3  # mostly negative
    q, s, z = impl.asymmetric_quantize(y, bits)
    assert (impl.asymmetric_dequantize(q, s, z) - y).abs().max() <= s.max() / 2 + 1e-5


@pytest.mark.parametrize("g", [16, 128, 7])
def test_group_quant_with_ragged_last_group(impl, g):
    x = torch.randn(3, 200)
    out = impl.group_quant_dequant(x, 4, g)
    assert out.shape == x.shape
    for c0 in range(0, 200, g):
        grp = x[:, c0:c0 + g]
        q, s = oracle_sym(grp, 4)
        assert torch.allclose(out[:, c0:c0 + g], q.float() * s, atol=1e-5), f"group at column {c0}"
    with pytest.raises(ValueError):
        impl.group_quant_dequant(x, 4, 0)


def test_pack_unpack_int4(impl):
    codes = torch.randint(-8, 8, (6, 40), dtype=torch.int8)
    packed = impl.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 20)
    for c in range(0, 40, 2):
        lo, hi = int(codes[0, c]) & 0xF, int(codes[0, c + 1]) & 0xF
        assert int(packed[0, c // 2]) == lo | (hi << 4)
    assert torch.equal(impl.unpack_int4(packed), codes)
    with pytest.raises(ValueError):
        impl.pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError):
        impl.pack_int4(torch.full((2, 4), 8, dtype=torch.int8))


def test_gptq_column_update_matches_obs_and_least_squares(impl):
    g = torch.Generator().manual_seed(7)
    X = torch.randn(600, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / X.shape[0]
    Hinv = torch.linalg.inv(H)
    U = torch.linalg.cholesky(Hinv, upper=True)
    W = torch.randn(5, 24, generator=g, dtype=torch.float64)
    W_orig = W.clone()
    q0 = torch.round(W[:, 0] * 2) / 2
    W_new, err = impl.gptq_column_update(W, U, 0, q0)
    assert torch.equal(W, W_orig), "W must not be modified in place"
    assert torch.allclose(W_new[:, 0], q0)
    assert torch.allclose(err, (W[:, 0] - q0) / U[0, 0])
    obs = W - ((W[:, 0] - q0) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
    assert torch.allclose(W_new, obs, atol=1e-8)
    ls = torch.linalg.lstsq(X[:, 1:], X @ W.T - X[:, :1] * q0[None, :]).solution.T
    assert torch.allclose(W_new[:, 1:], ls, atol=1e-6)
    # a later column only touches columns j.. (earlier ones are already quantized)
    W2, _ = impl.gptq_column_update(W, U, 3, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(W2[:, :3], W[:, :3]) and torch.allclose(W2[:, 3], torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError):
        impl.gptq_column_update(W, U, 24, q0)
