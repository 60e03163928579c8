"""FlashAttention pieces of chapter 11: the tiled torch forward, its HBM counter, and the Triton kernel, vs SDPA."""
import pytest
import torch
import torch.nn.functional as F

from common.advanced.flash import (HBMCounter, flash_attention_forward, flash_io_elements, standard_attention_forward,
                                   standard_io_elements, tile_size_for_sram)


def _qkv(rng, batch, heads, seq_q, seq_k, dim, dtype=torch.float32):
    q = torch.randn(batch, heads, seq_q, dim, generator=rng)
    k = torch.randn(batch, heads, seq_k, dim, generator=rng)
    v = torch.randn(batch, heads, seq_k, dim, generator=rng)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_forward_matches_sdpa_on_random_shapes(rng, causal):
    for _ in range(6):
        seq_q, seq_k = (int(n) for n in torch.randint(1, 97, (2,), generator=rng))
        dim = int(torch.randint(1, 65, (1,), generator=rng))
        block_m, block_n = (int(n) for n in torch.randint(1, 40, (2,), generator=rng))
        q, k, v = _qkv(rng, 2, 3, seq_q, seq_k, dim)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out = flash_attention_forward(q, k, v, causal=causal, block_m=block_m, block_n=block_n)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5,
                                   msg=f"Sq={seq_q} Sk={seq_k} d={dim} Bm={block_m} Bn={block_n}")


def test_tiled_forward_keeps_dtype_and_rejects_bad_input(rng):
    q, k, v = _qkv(rng, 1, 2, 16, 16, 8, torch.bfloat16)
    out = flash_attention_forward(q, k, v, block_m=4, block_n=4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q.float(), k.float(), v.float()),
                               atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError):
        flash_attention_forward(q, k[..., :4], v, block_m=4)
    with pytest.raises(ValueError):
        flash_attention_forward(q, k, v, block_m=0)


@pytest.mark.parametrize("seq_len, dim, block", [(64, 16, 8), (100, 32, 16), (256, 64, 64), (33, 8, 32)])
def test_hbm_counters_equal_the_closed_forms(rng, seq_len, dim, block):
    q, k, v = _qkv(rng, 1, 1, seq_len, seq_len, dim)
    flash, standard = HBMCounter(), HBMCounter()
    flash_attention_forward(q, k, v, block_m=block, block_n=block, counter=flash)
    standard_attention_forward(q, k, v, counter=standard)
    assert flash.total_bytes == 4 * flash_io_elements(seq_len, dim, block)
    assert standard.total_bytes == 4 * standard_io_elements(seq_len, dim)


def test_flash_traffic_scales_as_n2_d2_over_m():
    """Theorem 2 of Dao et al.: with B = M/4d, traffic ≈ 8 N² d² / M; doubling M halves it (large N)."""
    dim, seq_len = 64, 8192
    small, large = 16 * 1024, 64 * 1024
    io_small = flash_io_elements(seq_len, dim, tile_size_for_sram(small, dim))
    io_large = flash_io_elements(seq_len, dim, tile_size_for_sram(large, dim))
    assert io_small / io_large == pytest.approx(4.0, rel=0.05)
    assert io_small / (seq_len ** 2 * dim ** 2 / small) == pytest.approx(8.0, rel=0.05)
    with pytest.raises(ValueError):
        tile_size_for_sram(100, dim)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_kernel_matches_sdpa(rng, dtype, tol, causal):
    from common.advanced.triton_flash import triton_attention

    seq_q = int(torch.randint(17, 70, (1,), generator=rng))
    seq_k = seq_q if causal else int(torch.randint(17, 70, (1,), generator=rng))
    q, k, v = _qkv(rng, 2, 2, seq_q, seq_k, 32, dtype)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    out = triton_attention(q, k, v, causal=causal, block_m=16, block_n=32)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    with pytest.raises(ValueError):
        triton_attention(q[..., :24], k[..., :24], v[..., :24])
