"""Block allocator and block manager: unit cases plus randomized operation sequences that check
the invariants after every step, with a simulated KV store holding token ids (so a wrong prefix
hit, a missed copy-on-write or a reused live block shows up as wrong content)."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from common.paged import BlockAllocator, BlockManager, NoFreeBlocksError, chain_hashes


def test_allocator_refcounts_and_errors():
    a = BlockAllocator(3)
    b0, b1, b2 = a.allocate(), a.allocate(), a.allocate()
    assert a.num_free == 0 and {b0, b1, b2} == {0, 1, 2}
    with pytest.raises(NoFreeBlocksError):
        a.allocate()
    a.incref(b1)
    assert a.decref(b1) == 1 and a.num_free == 0
    assert a.decref(b1) == 0 and a.num_free == 1
    with pytest.raises(ValueError):
        a.decref(b1)
    with pytest.raises(ValueError):
        a.incref(b1)
    with pytest.raises(ValueError):
        a.ref_count(7)
    with pytest.raises(ValueError):
        BlockAllocator(0)


def test_chain_hash_depends_on_whole_prefix():
    a = chain_hashes([1, 2, 3, 4, 5, 6, 7], 2)
    b = chain_hashes([9, 9, 3, 4, 5, 6], 2)
    assert len(a) == 3 and len(b) == 3
    assert a[1] != b[1] and a[2] != b[2]          # same block tokens, different parents
    assert chain_hashes([1, 2, 3, 4], 2) == a[:2]


def test_cow_copies_only_shared_last_partial_block():
    m = BlockManager(num_blocks=10, block_size=4)
    m.allocate("p", list(range(10)))               # 3 blocks, last holds 2 tokens
    m.fork("p", "c")
    shared = m.block_table("p")
    copies = m.append_slots("p", 11)
    assert copies == [(shared[2], m.block_table("p")[2])]
    assert m.block_table("p")[:2] == shared[:2]     # full blocks stay shared, not copied
    assert m.append_slots("c", 11) == []            # the child is now the only user
    m.allocate("q", list(range(8)))                 # exactly two full blocks
    m.fork("q", "q2")
    assert m.append_slots("q", 9) == []             # a full last block is never copied
    for s in ("p", "c", "q", "q2"):
        m.free(s)
    assert m.num_free_blocks == 10


def test_prefix_hits_leave_one_token_and_short_prompts_never_hit():
    m = BlockManager(num_blocks=20, block_size=4, enable_prefix_caching=True)
    prompt = list(range(12))
    assert m.allocate(0, prompt) == 0
    m.mark_computed(0, prompt, 12)
    assert m.allocate(1, prompt) == 8              # 3 full blocks cached, the last recomputed
    assert m.allocate(2, prompt[:8] + [99]) == 8
    assert m.allocate(3, [0, 1, 2]) == 0           # shorter than a block: no full block, no hit
    assert m.stats.hits == 16 and m.stats.queries == 12 + 12 + 9 + 3
    with pytest.raises(ValueError):
        m.allocate(4, [])
    with pytest.raises(ValueError):
        m.allocate(1, prompt)


def test_lru_eviction_reuses_cached_blocks_only_when_needed():
    m = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    m.allocate("a", [1, 2, 3, 4, 5])
    m.mark_computed("a", [1, 2, 3, 4, 5], 5)
    m.free("a")
    assert m.num_free_blocks == 4 and m.prefix_cache.num_evictable == 2
    assert m.allocate("b", [1, 2, 3, 4, 9]) == 4   # both cached blocks reused
    m.free("b")
    assert m.can_allocate(list(range(100, 108)))
    m.allocate("c", list(range(100, 108)))          # needs all 4: evicts the cached ones
    assert m.prefix_cache.num_evictions == 2 and len(m.prefix_cache) == 0
    assert not m.can_allocate([7])
    with pytest.raises(NoFreeBlocksError):
        m.allocate("d", [7])


class Simulation:
    """Drives a BlockManager with random operations and a token-id 'KV store'."""

    def __init__(self, seed: int, num_blocks: int, block_size: int, caching: bool) -> None:
        self.rng = random.Random(seed)
        self.m = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
        self.kv = [None] * (num_blocks * block_size)
        self.tokens: dict[int, list[int]] = {}
        self.prefixes = [[self.rng.randrange(50) for _ in range(self.rng.randrange(1, 40))] for _ in range(4)]
        self.next_id = 0

    def write(self, sid: int, start: int, end: int) -> None:
        for pos, slot in zip(range(start, end), self.m.slot_mapping(sid, start, end)):
            self.kv[slot] = self.tokens[sid][pos]
        self.m.mark_computed(sid, self.tokens[sid], end)

    def apply(self, copies) -> None:
        bs = self.m.block_size
        for src, dst in copies:
            self.kv[dst * bs:(dst + 1) * bs] = self.kv[src * bs:(src + 1) * bs]

    def step(self) -> None:
        op, live = self.rng.random(), list(self.tokens)
        if op < 0.35 or not live:
            suffix = [self.rng.randrange(50) for _ in range(self.rng.randrange(0, 12))]
            prompt = list(self.rng.choice(self.prefixes)) + suffix
            if self.m.can_allocate(prompt):
                sid, self.next_id = self.next_id, self.next_id + 1
                self.tokens[sid] = prompt
                cached = self.m.allocate(sid, prompt)
                assert cached % self.m.block_size == 0 and cached < len(prompt)
                self.check_content(sid, cached)       # hit blocks already hold the right tokens
                self.write(sid, cached, len(prompt))
            else:
                with pytest.raises(NoFreeBlocksError):
                    self.m.allocate(-1, prompt)
        elif op < 0.75:
            sid = self.rng.choice(live)
            n = self.rng.randrange(1, 6)
            if self.m.can_append(sid, n):
                self.apply(self.m.append_slots(sid, len(self.tokens[sid]) + n))
                start = len(self.tokens[sid])
                self.tokens[sid] += [self.rng.randrange(50) for _ in range(n)]
                self.write(sid, start, start + n)
        elif op < 0.85:
            sid = self.rng.choice(live)
            child, self.next_id = self.next_id, self.next_id + 1
            self.m.fork(sid, child)
            self.tokens[child] = list(self.tokens[sid])
        else:
            sid = self.rng.choice(live)
            self.m.free(sid)
            del self.tokens[sid]

    def check_content(self, sid: int, upto: int | None = None) -> None:
        toks = self.tokens[sid][:upto]
        assert [self.kv[s] for s in self.m.slot_mapping(sid, 0, len(toks))] == toks

    def check_invariants(self) -> None:
        m, alloc, cache = self.m, self.m.allocator, self.m.prefix_cache
        refs = Counter(b for sid in self.tokens for b in m.block_table(sid))
        for b in range(alloc.num_blocks):
            expected = refs[b] + cache.is_cached(b)
            assert alloc.ref_count(b) == expected, f"block {b}: ref {alloc.ref_count(b)} != {expected}"
            assert not (cache.is_evictable(b) and refs[b]), f"evictable block {b} is referenced"
        assert alloc.num_free == sum(alloc.ref_count(b) == 0 for b in range(alloc.num_blocks))
        for sid in self.tokens:
            assert len(m.block_table(sid)) == m.blocks_needed(len(self.tokens[sid]))
            self.check_content(sid)


@pytest.mark.parametrize("caching", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_random_operations_keep_invariants(seed, caching):
    sim = Simulation(seed, num_blocks=24, block_size=random.Random(seed).choice([1, 2, 4, 8]), caching=caching)
    for _ in range(300):
        sim.step()
        sim.check_invariants()
    for sid in list(sim.tokens):
        sim.m.free(sid)
    del sim.tokens
    sim.tokens = {}
    sim.check_invariants()
    assert sim.m.num_free_blocks == sim.m.num_blocks and sim.m.usage == 0.0
    assert sim.m.allocator.num_free + sim.m.prefix_cache.num_evictable == sim.m.num_blocks


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_under_forced_key_collisions(seed, monkeypatch):
    """Block keys cut to one byte collide constantly; every hit must still hold the right tokens
    (Simulation.check_content runs on each allocation)."""
    import hashlib

    import common.paged.block_hash as bh
    import common.paged.block_manager as bm

    def one_byte(parent, tokens):
        return hashlib.sha256(parent + bytes(str(list(tokens)), "ascii")).digest()[:1]

    monkeypatch.setattr(bh, "hash_block", one_byte)
    monkeypatch.setattr(bm, "hash_block", one_byte)
    sim = Simulation(seed, num_blocks=24, block_size=random.Random(seed).choice([1, 2, 4]), caching=True)
    for _ in range(300):
        sim.step()
        sim.check_invariants()
    assert sim.m.stats.hits > 0
