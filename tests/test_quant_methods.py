"""GPTQ, AWQ, SmoothQuant, NF4, the INT8 KV cache, STE fake quantization and the GGUF Q4_1 reader,
each checked against a reference on fresh random inputs (or the `gguf` package)."""
import numpy as np
import pytest
import torch

from common.quant.awq import search_scale
from common.quant.fake_quant import fake_quant, fake_quant_detach
from common.quant.gptq import gptq_column_update, gptq_quantize, hessian, inverse_hessian_cholesky
from common.quant.kv_int8 import Int8KVCache, dequantize_kv, quantize_kv
from common.quant.nf4 import NF4_QLORA, book_levels, expected_mse_normal, lloyd_max_normal, nf4_levels
from common.quant.rtn import quant_dequant
from common.quant.smoothquant import W8A8Linear, int8_matmul, smooth_scales


def correlated_inputs(n=1024, d=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) * 0.3 + torch.randn(d, generator=g)


def test_gptq_column_update_is_the_obs_update_with_inverse_hessian():
    X = correlated_inputs()
    H = hessian(X)
    W = torch.randn(8, 96, dtype=torch.float64)
    U, _ = inverse_hessian_cholesky(H, damp=0.0)
    q0 = torch.round(W[:, 0] * 4) / 4
    W_new, _ = gptq_column_update(W, U.double(), 0, q0)
    Hinv = torch.linalg.inv(H)
    obs = W - ((W[:, 0] - q0) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
    assert torch.allclose(W_new, obs, atol=1e-8)
    assert torch.allclose(W_new[:, 0], q0)
    # it is the least-squares optimum of the remaining columns given column 0 fixed
    target = X.double() @ W.T
    rest = torch.linalg.lstsq(X.double()[:, 1:], target - X.double()[:, :1] * q0[None, :]).solution.T
    assert torch.allclose(W_new[:, 1:], rest, atol=1e-6)


def test_gptq_beats_rtn_on_layer_output_error():
    X = correlated_inputs(2048, 256)
    W = torch.randn(64, 256) * 0.05
    qt = gptq_quantize(W, hessian(X), bits=4, group_size=64, symmetric=False)
    def err(Wh: torch.Tensor) -> float:
        return float(((X @ (W - Wh).T) ** 2).mean())
    assert err(qt.dequantize()) < 0.8 * err(quant_dequant(W, 4, False, 64))
    assert qt.q.min() >= 0 and qt.q.max() <= 15 and qt.scale.shape == (64, 4)


def test_gptq_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        gptq_quantize(torch.randn(4, 8), torch.eye(6))


def test_awq_direction_beats_book_direction_on_salient_channels():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 256, generator=g)
    x[:, :4] *= 30  # a few salient input channels
    W = torch.randn(128, 256, generator=g) * 0.05
    _, _, awq_losses = search_scale(W, x, 4, 64, grid=6, direction="awq")
    _, _, book_losses = search_scale(W, x, 4, 64, grid=6, direction="book")
    assert awq_losses[0] == pytest.approx(book_losses[0])  # α = 0 is plain RTN for both
    assert min(awq_losses) < 0.9 * awq_losses[0]
    assert min(book_losses[1:]) > book_losses[0]  # scaling the wrong way only hurts


def test_w8a8_linear_matches_float_reference_and_int_mm_is_exact():
    a = torch.randint(-127, 128, (33, 64), dtype=torch.int8)
    b = torch.randint(-127, 128, (64, 40), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b), (a.long() @ b.long()).int())
    lin = torch.nn.Linear(64, 40, bias=False)
    x = torch.randn(2, 7, 64)
    ref = lin(x)
    out = W8A8Linear.from_linear(lin)(x)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_smooth_scales_balance_activation_and_weight_ranges():
    act, w = torch.rand(64) * 50 + 0.1, torch.rand(64) + 0.1
    s = smooth_scales(act, w, 0.5)
    assert torch.allclose(act / s, w * s, rtol=1e-5)  # α = 0.5: equal ranges after migration
    with pytest.raises(ValueError):
        smooth_scales(act, w, 1.5)


def test_nf4_construction_reproduces_qlora_table_and_book_formula_has_no_zero():
    assert torch.allclose(nf4_levels(), torch.tensor(NF4_QLORA, dtype=torch.float64), atol=1e-6)
    assert (nf4_levels() == 0).any() and not (book_levels() == 0).any()
    lm = lloyd_max_normal(16)
    assert expected_mse_normal(lm) < expected_mse_normal(book_levels(normalize=False))


def test_int8_kv_cache_matches_sdpa_on_dequantized_keys():
    from common.model.attention import sdpa
    from common.model.llama import LlamaConfig

    cfg = LlamaConfig(vocab_size=10, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    cache = Int8KVCache(cfg, 2, 16)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    out = cache.attend(0, q, k, v)
    kq, ks = quantize_kv(k)
    vq, vs = quantize_kv(v)
    ref = sdpa(q, dequantize_kv(kq, ks, q.dtype), dequantize_kv(vq, vs, q.dtype), causal=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert (dequantize_kv(kq, ks, torch.float32) - k).abs().max() <= k.abs().amax(-1).max() / 127
    assert Int8KVCache.bytes_per_token(cfg) == 2 * 1 * 2 * (8 + 2)


def test_ste_passes_gradient_straight_through():
    w = torch.randn(4, 64, requires_grad=True)
    y = fake_quant(w, 4, 32)
    assert torch.allclose(y, quant_dequant(w.detach(), 4, True, 32))
    (y * torch.arange(64.0)).sum().backward()
    assert torch.allclose(w.grad, torch.arange(64.0).expand(4, 64))
    w2 = w.detach().clone().requires_grad_(True)
    (fake_quant_detach(w2, 4, 32) * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, w2.grad)


def test_gguf_q4_1_reader_equals_gguf_package():
    gguf = pytest.importorskip("gguf")
    from common.models.convert import smollm2_gguf_path
    from common.quant.gguf_q4_1 import GGUFFile, dequantize_q4_1, encode_q4_1

    path = smollm2_gguf_path()
    ours = GGUFFile(path)
    reader = gguf.GGUFReader(path)
    checked = 0
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1 and t.name.startswith(("blk.0.", "blk.29.")):
            assert ours.tensors[t.name].offset == t.data_offset
            assert np.array_equal(ours.dequantize(t.name).numpy(), gguf.quants.dequantize(t.data, t.tensor_type))
            checked += 1
    assert checked == 14
    x = torch.randn(4, 64)
    assert (dequantize_q4_1(encode_q4_1(x), (4, 64)) - x).abs().max() <= (x.max() - x.min()) / 15
