"""PagedAttention (reference online softmax, gather+SDPA, Triton under the interpreter) against
torch SDPA on the gathered cache, for ragged GQA batches with scattered block tables.
Tolerances: fp32 1e-5, bf16 2e-2 (absolute, on unit-variance inputs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.model.llama import LlamaConfig
from common.paged import (BlockManager, PagedKVStore, paged_attention, paged_attention_reference,
                          per_block_softmax_wrong)

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def ragged_case(rng: torch.Generator, dtype: torch.dtype, lens=(1, 17, 64, 40), block_size=16, hq=6, hkv=2, d=64):
    num_blocks = sum(-(-n // block_size) for n in lens) + 5
    k_cache = torch.randn(num_blocks, block_size, hkv, d, generator=rng).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, d, generator=rng).to(dtype)
    q = torch.randn(len(lens), hq, d, generator=rng).to(dtype)
    perm = torch.randperm(num_blocks, generator=rng).tolist()
    max_blocks = max(-(-n // block_size) for n in lens)
    tables = torch.full((len(lens), max_blocks), -1, dtype=torch.long)
    for b, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[b, :nb] = torch.tensor([perm.pop() for _ in range(nb)])
    return q, k_cache, v_cache, tables, torch.tensor(lens)


def sdpa_oracle(q, k_cache, v_cache, tables, lens):
    outs = []
    for b, n in enumerate(lens.tolist()):
        blocks = tables[b, :-(-n // k_cache.shape[1])]
        k = k_cache[blocks].flatten(0, 1)[:n].transpose(0, 1)[None].float()
        v = v_cache[blocks].flatten(0, 1)[:n].transpose(0, 1)[None].float()
        outs.append(F.scaled_dot_product_attention(q[b:b + 1, :, None].float(), k, v, enable_gqa=True)[0, :, 0])
    return torch.stack(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn", [paged_attention_reference, paged_attention])
def test_paged_matches_sdpa(rng, dtype, fn):
    case = ragged_case(rng, dtype)
    err = (fn(*case).float() - sdpa_oracle(*case)).abs().max().item()
    assert err < TOL[dtype], f"{fn.__name__} {dtype}: max error {err}"


def test_triton_kernel_matches_sdpa(rng):
    from common.paged.paged_attention_triton import paged_attention_triton
    case = ragged_case(rng, torch.float32, lens=(3, 33, 16), block_size=8, hq=4, hkv=2, d=16)
    err = (paged_attention_triton(*case) - sdpa_oracle(*case)).abs().max().item()
    assert err < TOL[torch.float32], err


def test_books_per_block_softmax_is_wrong(rng):
    case = ragged_case(rng, torch.float32, lens=(40, 64))
    assert (per_block_softmax_wrong(*case) - sdpa_oracle(*case)).abs().max() > 0.1
    one_block = ragged_case(rng, torch.float32, lens=(10,))      # a single block: softmax is exact
    assert torch.allclose(per_block_softmax_wrong(*one_block), sdpa_oracle(*one_block), atol=1e-5)


def test_bad_inputs_raise(rng):
    q, k, v, tables, lens = ragged_case(rng, torch.float32)
    with pytest.raises(ValueError):
        paged_attention(q, k, v, tables, lens + 1000)
    with pytest.raises(ValueError):
        paged_attention(q[:, :5], k, v, tables, lens)
    with pytest.raises(ValueError):
        paged_attention(q, k, v, tables[:2], lens)


def test_kv_store_write_and_copy_follow_block_manager(rng):
    cfg = LlamaConfig(vocab_size=10, hidden_size=32, intermediate_size=8, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    store = PagedKVStore(cfg, num_blocks=8, block_size=4)
    m = BlockManager(8, 4)
    m.allocate("a", list(range(6)))
    k, v = torch.randn(6, 2, 8, generator=rng), torch.randn(6, 2, 8, generator=rng)
    slots = torch.tensor(m.slot_mapping("a", 0, 6))
    store.write(1, slots, k, v)
    m.fork("a", "b")
    store.copy_blocks(m.append_slots("b", 7))
    for sid in ("a", "b"):
        table = torch.tensor([m.block_table(sid)])
        got, _ = store.k_cache[1][table].flatten(1, 2), None
        assert torch.equal(got[0, :6], k), sid
    assert m.block_table("a")[1] != m.block_table("b")[1]
    assert store.nbytes == 2 * 2 * 8 * 4 * 2 * 8 * 4
    assert PagedKVStore.num_blocks_for_memory(cfg, store.nbytes, 4, torch.float32) == 8
    with pytest.raises(ValueError):
        store.write(0, slots[:3], k, v)


def test_head_major_store_matches_block_major(rng):
    """HeadMajorKVStore holds the same K/V as PagedKVStore for the same slots, gathers them in either
    layout, and copies blocks (copy-on-write) the same way."""
    from common.paged import HeadMajorKVStore

    cfg = LlamaConfig(vocab_size=10, hidden_size=32, intermediate_size=8, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    plain, head = PagedKVStore(cfg, 6, 4), HeadMajorKVStore(cfg, 6, 4)
    slots = torch.randperm(24, generator=rng)[:13]
    k = torch.randn(13, cfg.num_key_value_heads, cfg.head_dim, generator=rng)
    v = torch.randn(13, cfg.num_key_value_heads, cfg.head_dim, generator=rng)
    for store in (plain, head):
        store.write(1, slots, k, v)
        store.copy_blocks([(0, 5), (2, 3)])
    blocks = torch.tensor([[5, 1, 3], [0, 2, 4]])
    for a, b in zip(plain.gather(1, blocks, torch.float32), head.gather(1, blocks, torch.float32)):
        assert torch.equal(a, b)
    hk, hv = head.gather_rows(1, head.block_rows(blocks))
    pk, pv = plain.gather(1, blocks, torch.float32)                      # [2, 3, 4, Hkv, D]
    assert torch.equal(hk.view(cfg.num_key_value_heads, 2, 12, -1), pk.flatten(1, 2).permute(2, 0, 1, 3))
    assert torch.equal(hv.view(cfg.num_key_value_heads, 2, 12, -1), pv.flatten(1, 2).permute(2, 0, 1, 3))
    with pytest.raises(ValueError, match="slot out of range"):
        head.write(0, torch.tensor([24]), k[:1], v[:1])
