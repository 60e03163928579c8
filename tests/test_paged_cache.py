"""The model on a paged cache gives the contiguous cache's logits (fp32, 1e-4): plain prefill,
a prefill that starts after prefix-cache hits, and decode of forked samples after copy-on-write."""
from __future__ import annotations

import pytest
import torch

from common.model.kv_cache import KVCache
from common.paged import BlockManager, PagedKVStore
from common.paged.paged_cache import PagedSeqCache


def contiguous_logits(model, ids: list[int]) -> torch.Tensor:
    cache = KVCache(model.config, 1, len(ids) + 1)
    return model(torch.tensor([ids]), cache=cache)[0]


@torch.inference_mode()
def test_prefix_hit_prefill_and_forked_decode(tiny, rng):
    cfg = tiny.config
    m, store = BlockManager(40, 4, enable_prefix_caching=True), PagedKVStore(cfg, 40, 4)
    a = torch.randint(0, cfg.vocab_size, (23,), generator=rng).tolist()
    m.allocate("a", a)
    out = tiny(torch.tensor([a]), cache=PagedSeqCache(m, store, ["a"], 0))[0]
    assert torch.allclose(out, contiguous_logits(tiny, a), atol=1e-4)
    m.mark_computed("a", a, len(a))

    b = a[:18] + torch.randint(0, cfg.vocab_size, (6,), generator=rng).tolist()
    cached = m.allocate("b", b)
    assert cached == 16
    out = tiny(torch.tensor([b[cached:]]), cache=PagedSeqCache(m, store, ["b"], cached))[0]
    assert torch.allclose(out, contiguous_logits(tiny, b)[cached:], atol=1e-4)

    m.fork("b", "b2")                      # 24 tokens: full last block, then a new partial one
    m.fork("a", "a2")                      # 23 tokens: shared partial last block -> COW
    seqs, nxt = ["a", "a2", "b", "b2"], [[3], [4], [5], [6]]
    copies = [c for s in seqs for c in m.append_slots(s, m.num_tokens(s) + 1)]
    assert len(copies) == 1
    store.copy_blocks(copies)
    a_out = tiny(torch.tensor(nxt[:2]), cache=PagedSeqCache(m, store, seqs[:2], 23))
    b_out = tiny(torch.tensor(nxt[2:]), cache=PagedSeqCache(m, store, seqs[2:], 24))
    for out, prompt, tok in [(a_out[0], a, 3), (a_out[1], a, 4), (b_out[0], b, 5), (b_out[1], b, 6)]:
        assert torch.allclose(out[-1], contiguous_logits(tiny, prompt + [tok])[-1], atol=1e-4)


def test_missing_slots_raise(tiny):
    m, store = BlockManager(8, 4), PagedKVStore(tiny.config, 8, 4)
    m.allocate("a", [1, 2, 3])
    with pytest.raises(ValueError):
        tiny(torch.tensor([[1, 2, 3, 4, 5]]), cache=PagedSeqCache(m, store, ["a"], 0))
