"""Prefix caching inside the engine: the token budget is charged after the cache hits are known,
and forced key collisions never hand a request another request's KV."""
import hashlib

import pytest
import torch

from common.engine import LLM, SamplingParams
from common.model.generate import greedy_generate
from common.paged import BlockManager
from common.paged import block_hash as bh

GREEDY = dict(temperature=0.0, ignore_eos=True)


def _collide(monkeypatch, digest):
    """Replace the block key everywhere it is used (block_manager imported it by name)."""
    import common.paged.block_manager as bm

    monkeypatch.setattr(bh, "hash_block", digest)
    monkeypatch.setattr(bm, "hash_block", digest)


def one_byte(parent: bytes, tokens) -> bytes:
    """sha256 cut to 1 byte: 256 keys, so distinct blocks collide all the time."""
    return hashlib.sha256(parent + bytes(str(list(tokens)), "ascii")).digest()[:1]


def tokens_only(parent: bytes, tokens) -> bytes:
    """Ignores the parent: equal blocks after different prefixes collide (their KV differs)."""
    return hashlib.sha256(bytes(str(list(tokens)), "ascii")).digest()


def test_a_step_with_prefix_hits_admits_as_many_as_the_budget_allows(tiny, rng):
    budget, bs = 6, 4
    prompt = torch.randint(3, 49152, (4 * bs + 1,), generator=rng).tolist()   # 4 full blocks + 1 token
    llm = LLM(tiny, num_blocks=128, block_size=bs, max_num_batched_tokens=budget)
    llm.generate([prompt], SamplingParams(max_tokens=1, **GREEDY), use_tqdm=False)   # caches the 4 blocks
    for _ in range(10):
        llm.add_request(prompt, SamplingParams(max_tokens=3, **GREEDY))
    llm.step()
    first = llm.stats[-1]
    assert len(first.seq_ids) == budget and first.num_tokens == budget   # 1 uncached token each
    while llm.has_unfinished_requests():
        llm.step()
    assert llm.block_manager.stats.hits == 10 * 4 * bs


def test_collisions_never_return_wrong_kv_in_the_block_manager(monkeypatch):
    _collide(monkeypatch, lambda parent, tokens: b"same key for every block")
    m = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    m.allocate("a", a)
    m.mark_computed("a", a, len(a))
    assert m.allocate("b", [9, 9, 9, 9, 5, 6, 7, 8, 0]) == 0     # same key, other tokens: a miss
    assert m.allocate("c", [1, 2, 3, 4, 7, 7, 7, 7, 0]) == 4     # first block really equal: a hit
    assert m.allocate("d", a) == 4          # block 2's key collides with block 1's: it was never cached
    m.free("a")
    for sid in ("b", "c", "d"):
        m.free(sid)
    assert m.num_free_blocks == m.num_blocks


@pytest.mark.parametrize("digest", [one_byte, tokens_only, lambda parent, tokens: b"k"])
def test_collisions_keep_engine_outputs_exact(tiny, rng, monkeypatch, digest):
    _collide(monkeypatch, digest)
    base = torch.randint(3, 49152, (24,), generator=rng).tolist()
    prompts = [base + torch.randint(3, 49152, (n,), generator=rng).tolist() for n in (3, 9, 1, 14)]
    prompts += [torch.randint(3, 49152, (n,), generator=rng).tolist() for n in (20, 33)]
    prompts += [p[:8] + p[8:] for p in prompts[:3]]                         # repeats: real hits
    head_x, head_y, middle = (torch.randint(3, 49152, (n,), generator=rng).tolist() for n in (4, 4, 8))
    prompts += [head_x + middle + [5], head_y + middle + [6], head_y + middle + [7]]   # same blocks, other parents
    llm = LLM(tiny, num_blocks=48, block_size=4, max_num_batched_tokens=40)
    outs = []
    for p in prompts:           # one at a time, so every later prompt can hit what earlier ones cached
        outs += llm.generate([p], SamplingParams(max_tokens=6, **GREEDY), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [greedy_generate(tiny, p, 6) for p in prompts]
    assert sum(o.num_cached_tokens for o in outs) > 0          # equal blocks are still reused
