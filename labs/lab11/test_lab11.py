"""Lab 11 tests: the tiled attention against torch SDPA, routing and capacity against brute-force loops,
the load-balancing loss against transformers' `load_balancing_loss_func`, the mask against a double loop —
fresh random inputs every run (labs/conftest.py seeds `random` and torch per test and prints the seed when
a test fails: rerun it with TEST_SEED=<seed>)."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("causal", [False, True])
def test_flash_forward_matches_sdpa(impl, causal):
    for _ in range(4):
        batch, heads, dim = random.randint(1, 2), random.randint(1, 3), random.choice([8, 16, 32])
        seq_q = random.randint(1, 150)
        seq_k = seq_q if causal else random.randint(1, 150)
        block_m, block_n = random.choice([1, 7, 16, 64]), random.choice([1, 5, 16, 64])
        q, k, v = (torch.randn(batch, heads, s, dim) for s in (seq_q, seq_k, seq_k))
        out = impl.flash_attention_forward(q, k, v, causal=causal, block_m=block_m, block_n=block_n)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert out.shape == ref.shape and out.dtype == q.dtype
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_flash_forward_keeps_dtype_and_rejects_bad_shapes(impl):
    q, k, v = (torch.randn(1, 2, 33, 16, dtype=torch.bfloat16) for _ in range(3))
    out = impl.flash_attention_forward(q, k, v, causal=True, block_m=8, block_n=8)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError):
        impl.flash_attention_forward(q, k, v[..., :8])
    with pytest.raises(ValueError):
        impl.flash_attention_forward(q, k[:, :1], v[:, :1])


def test_route_matches_brute_force(impl):
    tokens, experts = random.randint(1, 40), random.randint(2, 16)
    top_k = random.randint(1, experts)
    logits = torch.randn(tokens, experts) * 3
    weights, ids = impl.route(logits, top_k)
    assert weights.shape == ids.shape == (tokens, top_k) and weights.dtype == torch.float32
    for t in range(tokens):
        probs = [math.exp(x) for x in logits[t].tolist()]
        total = sum(probs)
        probs = [p / total for p in probs]
        best = sorted(range(experts), key=lambda e: -probs[e])[:top_k]
        kept = sum(probs[e] for e in best)
        assert sorted(ids[t].tolist()) == sorted(best)
        for j in range(top_k):
            assert weights[t, j].item() == pytest.approx(probs[int(ids[t, j])] / kept, rel=1e-5, abs=1e-7)
        assert weights[t].sum().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        impl.route(logits, experts + 1)
    with pytest.raises(ValueError):
        impl.route(logits, 0)


def test_expert_capacity(impl):
    tokens, experts, top_k = random.randint(1, 500), random.randint(1, 64), random.randint(1, 4)
    factor = random.choice([0.5, 1.0, 1.25, 2.0, 0.3])
    assert impl.expert_capacity(tokens, experts, top_k, factor) == math.ceil(factor * tokens * top_k / experts)
    with pytest.raises(ValueError):
        impl.expert_capacity(tokens, experts, top_k, 0.0)


def brute_force_keep(ids: list[list[int]], capacity: int) -> list[list[bool]]:
    used: dict[int, int] = {}
    keep = [[False] * len(row) for row in ids]
    for j in range(len(ids[0])):
        for t, row in enumerate(ids):
            e = row[j]
            if used.get(e, 0) < capacity:
                keep[t][j] = True
                used[e] = used.get(e, 0) + 1
    return keep


def test_capacity_keep_matches_brute_force(impl):
    for _ in range(5):
        tokens, experts = random.randint(1, 60), random.randint(2, 8)
        top_k = random.randint(1, min(3, experts))
        skew = torch.randn(experts) * 2                        # uneven load, so that some slots overflow
        ids = torch.stack([torch.multinomial(torch.softmax(skew, 0), top_k) for _ in range(tokens)])
        capacity = random.randint(0, tokens)
        keep = impl.capacity_keep(ids, experts, capacity)
        assert keep.dtype == torch.bool and keep.shape == ids.shape
        assert keep.tolist() == brute_force_keep(ids.tolist(), capacity)


def test_load_balancing_loss_matches_transformers(impl):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    tokens, experts = random.randint(2, 64), random.randint(2, 16)
    top_k = random.randint(1, min(4, experts))
    logits = (torch.randn(tokens, experts) * 2).requires_grad_(True)
    loss = impl.load_balancing_loss(logits, top_k)
    ref = load_balancing_loss_func((logits.detach(),), experts, top_k)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sink_window_mask_matches_loop(impl):
    for _ in range(5):
        keys = random.randint(1, 40)
        queries = random.randint(1, keys)
        window = random.choice([None, random.randint(1, keys + 2)])
        sinks = random.randint(0, 5)
        mask = impl.sink_window_mask(queries, keys, window=window, num_sinks=sinks)
        assert mask.dtype == torch.bool and mask.shape == (queries, keys)
        for i in range(queries):
            p = keys - queries + i
            for j in range(keys):
                expected = j <= p and (window is None or p - j < window or j < sinks)
                assert bool(mask[i, j]) == expected, (i, j, window, sinks)
    with pytest.raises(ValueError):
        impl.sink_window_mask(5, 4)
    with pytest.raises(ValueError):
        impl.sink_window_mask(4, 4, window=0)


def test_sink_window_mask_in_attention_equals_dropping_keys(impl):
    """Attention under the mask equals attention over only the sink and window keys, row by row."""
    n, dim, window, sinks = random.randint(10, 40), 16, random.randint(2, 8), random.randint(1, 4)
    q, k, v = (torch.randn(1, 2, n, dim) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=impl.sink_window_mask(n, n, window, sinks))
    for p in range(n):
        kept = sorted(set(range(min(sinks, p + 1))) | set(range(max(0, p - window + 1), p + 1)))
        row = F.scaled_dot_product_attention(q[:, :, p:p + 1], k[:, :, kept], v[:, :, kept])
        torch.testing.assert_close(out[:, :, p:p + 1], row, atol=1e-5, rtol=1e-5)
