"""Lab 5 tests: every function against torch's scaled_dot_product_attention or a brute-force
oracle, on fresh random shapes and values each run (labs/conftest.py seeds `random` and torch per
test and prints the seed when a test fails: rerun it with TEST_SEED=<seed>)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

TOL = dict(atol=1e-5, rtol=1e-4)   # fp32 attention: sums of <= 64 terms


def _sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _qkv(batch, hq, hkv, sq, sk, d):
    return (torch.randn(batch, hq, sq, d), torch.randn(batch, hkv, sk, d), torch.randn(batch, hkv, sk, d))


def test_causal_mask_square_and_over_cache(impl):
    n = random.randint(2, 9)
    square = impl.causal_mask(n)
    assert square.dtype == torch.bool
    assert torch.equal(square, torch.tril(torch.ones(n, n, dtype=torch.bool)))
    extra = random.randint(1, 6)
    rect = impl.causal_mask(n, n + extra)
    for i in range(n):
        for j in range(n + extra):
            assert bool(rect[i, j]) == (j <= i + extra)
    assert impl.causal_mask(1, 7).all()


@pytest.mark.parametrize("left", [False, True])
def test_padding_mask(impl, left):
    lengths = [random.randint(1, 8) for _ in range(random.randint(2, 5))]
    mask = impl.padding_mask(lengths, left=left)
    width = max(lengths)
    assert mask.shape == (len(lengths), width) and mask.dtype == torch.bool
    for row, n in zip(mask.tolist(), lengths):
        expected = [False] * (width - n) + [True] * n if left else [True] * n + [False] * (width - n)
        assert row == expected
    assert impl.padding_mask([2, 3], max_len=6).shape == (2, 6)


def test_ragged_mask_is_block_diagonal_causal(impl):
    lengths = [random.randint(1, 6) for _ in range(random.randint(2, 4))]
    mask = impl.ragged_mask(lengths)
    owner = [i for i, n in enumerate(lengths) for _ in range(n)]
    total = sum(lengths)
    assert mask.shape == (total, total) and mask.dtype == torch.bool
    for qi in range(total):
        for ki in range(total):
            assert bool(mask[qi, ki]) == (owner[qi] == owner[ki] and ki <= qi)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (3, 1)])
def test_attention_matches_sdpa(impl, hq, hkv):
    sq = random.randint(1, 12)
    sk = sq + random.randint(0, 5)
    q, k, v = _qkv(2, hq, hkv, sq, sk, 16)
    mask = torch.rand(sq, sk) < 0.7
    mask[:, 0] = True                                  # no fully masked row
    torch.testing.assert_close(impl.attention(q, k, v), _sdpa(q, k, v), **TOL)
    torch.testing.assert_close(impl.attention(q, k, v, mask), _sdpa(q, k, v, mask), **TOL)


def test_decode_step_equals_last_row_of_full_attention(impl):
    s = random.randint(1, 20)
    q_all, k_all, v_all = _qkv(2, 6, 2, s + 1, s + 1, 16)
    full = _sdpa(q_all, k_all, v_all, torch.tril(torch.ones(s + 1, s + 1, dtype=torch.bool)))
    out, k_cat, v_cat = impl.decode_step(q_all[:, :, -1:], k_all[:, :, -1:], v_all[:, :, -1:],
                                         k_all[:, :, :-1], v_all[:, :, :-1])
    assert out.shape == (2, 6, 1, 16)
    torch.testing.assert_close(out, full[:, :, -1:], **TOL)
    assert torch.equal(k_cat, k_all) and torch.equal(v_cat, v_all)


def test_kv_bytes_per_token(impl):
    assert impl.kv_bytes_per_token(32, 32, 128, 2) == 512 * 1024          # Llama-2-7B, fp16
    assert impl.kv_bytes_per_token(32, 8, 128, 2) == 128 * 1024            # Llama-3-8B: GQA, 8 KV heads
    layers, heads, dim, nbytes = (random.randint(1, 80), random.randint(1, 16), random.choice([64, 128]),
                                  random.choice([1, 2, 4]))
    cache = torch.zeros(layers, 2, heads, dim, dtype={1: torch.int8, 2: torch.bfloat16, 4: torch.float32}[nbytes])
    assert impl.kv_bytes_per_token(layers, heads, dim, nbytes) == cache.nbytes
    for bad in [(0, 8, 128, 2), (32, -1, 128, 2), (32, 8, 128, 0)]:
        with pytest.raises(ValueError):
            impl.kv_bytes_per_token(*bad)


def test_prefill_chunks_reproduce_full_causal_attention(impl):
    n = random.randint(6, 24)
    q, k, v = _qkv(1, 4, 2, n, n, 8)
    full = _sdpa(q, k, v, torch.tril(torch.ones(n, n, dtype=torch.bool)))
    cuts = sorted(random.sample(range(1, n), 2))
    k_cache, v_cache = k[:, :, :0], v[:, :, :0]
    pieces = []
    for start, end in zip([0] + cuts, cuts + [n]):
        out, k_cache, v_cache = impl.prefill_chunk(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                                   k_cache, v_cache)
        assert out.shape == (1, 4, end - start, 8)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, **TOL)
    assert torch.equal(k_cache, k) and torch.equal(v_cache, v)
