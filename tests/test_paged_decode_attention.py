"""Decode attention over paged K/V: the C++ kernel and the gather + matmul path against SDPA.

The reference is torch SDPA over each sequence's K/V laid out contiguously (fp32 math). Tables are
random permutations of the blocks (sequences' pages interleaved), lengths cover partial last blocks,
one block, and GQA groups of 1 to 4 and 7 (the bf16 head_dim-64 path keeps up to 8 heads' accumulators in
registers, specialised per group size). Tolerances: fp32 1e-5 (the kernel's exp polynomial has a
relative error of about 1e-7); bf16 one bf16 rounding of the output (2^-8 relative) on top of the
reference computed from the same bf16 K/V in fp32.
"""
from __future__ import annotations

import pytest
import torch

from common.model.attention import sdpa
from common.paged.decode_attention import (check_decode_inputs, decode_attention, decode_kernel_available,
                                           paged_decode_attention)

needs_kernel = pytest.mark.skipif(not decode_kernel_available(), reason="no C++ compiler for the CPU kernel")


def _case(rng: torch.Generator, dtype: torch.dtype, hq: int, hkv: int, dim: int, batch: int, block_size: int):
    """Random caches, interleaved block tables and lengths; returns the kernel inputs and the SDPA reference."""
    max_len = 5 * block_size + 3
    lengths = torch.randint(1, max_len + 1, (batch,), generator=rng)
    lengths[0] = 1                                    # a single cached token
    width = int((lengths.max() + block_size - 1) // block_size)
    num_blocks = batch * width + 5
    k_cache = torch.randn(hkv, num_blocks, block_size, dim, generator=rng).to(dtype)
    v_cache = torch.randn(hkv, num_blocks, block_size, dim, generator=rng).to(dtype)
    tables = torch.randperm(num_blocks, generator=rng)[:batch * width].view(batch, width)
    q = torch.randn(hq, batch, dim, generator=rng).to(dtype)
    ref = []
    for b in range(batch):
        n = int(lengths[b])
        slots = (tables[b, :, None] * block_size + torch.arange(block_size)).reshape(-1)[:n]
        keys = k_cache.view(hkv, -1, dim)[:, slots].float().repeat_interleave(hq // hkv, 0)    # [Hq, n, D]
        values = v_cache.view(hkv, -1, dim)[:, slots].float().repeat_interleave(hq // hkv, 0)
        ref.append(sdpa(q[:, b, None].float()[None], keys[None], values[None])[0, :, 0])        # [Hq, D]
    return q, k_cache, v_cache, tables, lengths, torch.stack(ref, 1)


def _tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 2 ** -7}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,dim,block_size", [(9, 3, 64, 16), (4, 4, 32, 32), (6, 2, 24, 8),
                                                   (8, 8, 64, 32), (8, 2, 64, 8), (7, 1, 64, 16)])
def test_kernel_equals_sdpa(dtype, hq, hkv, dim, block_size, rng):
    q, k_cache, v_cache, tables, lengths, ref = _case(rng, dtype, hq, hkv, dim, 7, block_size)
    got = paged_decode_attention(q, k_cache, v_cache, tables.int(), lengths.int(), dim ** -0.5)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), ref, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_path_equals_sdpa(dtype, rng):
    """The portable path: gather the pages, mask the padding, two matmuls."""
    hq, hkv, dim, bs = 9, 3, 64, 16
    q, k_cache, v_cache, tables, lengths, ref = _case(rng, dtype, hq, hkv, dim, 7, bs)
    keys = k_cache[:, tables].reshape(hkv, len(lengths), -1, dim)
    values = v_cache[:, tables].reshape(hkv, len(lengths), -1, dim)
    valid = torch.arange(keys.shape[2])[None] < lengths[:, None]
    torch.testing.assert_close(decode_attention(q, keys, values, valid).float(), ref, **_tolerance(dtype))


@needs_kernel
def test_kernel_reads_only_the_sequences_own_pages(rng):
    """Poisoning every block no table lists (and the padding of the tables) changes nothing."""
    q, k_cache, v_cache, tables, lengths, _ = _case(rng, torch.float32, 9, 3, 64, 5, 16)
    before = paged_decode_attention(q, k_cache, v_cache, tables.int(), lengths.int(), 0.125)
    used = torch.zeros(k_cache.shape[1], dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        used[tables[b, :(n + 15) // 16]] = True
    k_cache[:, ~used], v_cache[:, ~used] = float("nan"), float("nan")
    after = paged_decode_attention(q, k_cache, v_cache, tables.int(), lengths.int(), 0.125)
    assert torch.equal(before, after)


def test_bad_inputs_are_refused_clearly(rng):
    q, k_cache, v_cache, tables, lengths, _ = _case(rng, torch.float32, 9, 3, 64, 3, 16)
    tables, lengths = tables.int(), lengths.int()
    check_decode_inputs(q, k_cache, v_cache, tables, lengths)
    bad = {
        "dtype": (q.bfloat16(), k_cache, v_cache, tables, lengths),
        "int32": (q, k_cache, v_cache, tables.long(), lengths),
        "capacity": (q, k_cache, v_cache, tables, lengths + 10_000),
        "block ids": (q, k_cache, v_cache, tables + k_cache.shape[1], lengths),
        "heads": (q[:8], k_cache, v_cache, tables, lengths),
        "queries": (q, k_cache, v_cache, tables[:2], lengths),
    }
    for what, args in bad.items():
        with pytest.raises(ValueError):
            check_decode_inputs(*args)
        if decode_kernel_available():
            with pytest.raises(ValueError):
                paged_decode_attention(*args, 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_plans_the_kernel_or_the_gather_path_with_equal_results(dtype, monkeypatch, rng):
    """`HeadMajorKVStore.plan_decode` picks the kernel on CPU when it is built, else gather + matmuls (what
    a machine without a compiler, or CUDA, runs); both give the same attention."""
    import common.paged.kv_store as kv_store
    from common.models import load_model
    from common.paged.decode_attention import GatherDecode, KernelDecode

    config = load_model("tiny").config
    store = kv_store.HeadMajorKVStore(config, 24, 8, dtype)
    for cache in (*store.k_cache, *store.v_cache):
        cache.copy_(torch.randn(cache.shape, generator=rng))
    tables, lengths = [[3, 7, 1], [0], [12, 5]], [20, 2, 16]
    slots = [table[(n - 1) // 8] * 8 + (n - 1) % 8 for table, n in zip(tables, lengths)]   # each new token's slot
    q = torch.randn(config.num_attention_heads, 3, config.head_dim, generator=rng).to(dtype)
    # the new K/V as the model hands them over: [Hkv, B, D] views with a token stride (not contiguous)
    packed = torch.randn(3, 2, config.num_key_value_heads, config.head_dim, generator=rng).to(dtype)
    k, v = packed[:, 0].transpose(0, 1), packed[:, 1].transpose(0, 1)
    plans = {}
    for available in (True, False):
        monkeypatch.setattr(kv_store, "decode_kernel_available", lambda: available)
        plans[available] = store.plan_decode(tables, lengths, slots)
    assert isinstance(plans[False], GatherDecode)
    assert isinstance(plans[True], KernelDecode) or not decode_kernel_available()
    for layer in range(config.num_hidden_layers):
        outputs = {}
        for available, plan in plans.items():
            outputs[available] = plan(layer, q, k, v).float()
            for cache, new in ((store.k_cache[layer], k), (store.v_cache[layer], v)):   # the plan wrote the rows
                written = cache.view(config.num_key_value_heads, -1, config.head_dim)[:, slots]
                assert torch.equal(written, new)
        torch.testing.assert_close(outputs[True], outputs[False], **_tolerance(dtype))
