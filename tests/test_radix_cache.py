"""Our radix tree: splits, page alignment, locks, LRU/LFU/LRFU leaf eviction, longest-prefix-first order;
and agreement with SGLang's own RadixCache (simulated mode) on random traces."""
from __future__ import annotations

import random

import pytest

from common.paged.radix_cache import RadixCache, longest_prefix_first


def test_split_on_partial_match_and_values():
    c = RadixCache()
    assert c.insert([1, 2, 3, 4], [10, 11, 12, 13]) == 0
    assert c.insert([1, 2, 5], [10, 11, 20]) == 2           # shares 2 tokens, edge split
    assert c.num_nodes() == 3 and c.total_size() == 5
    values, node = c.match_prefix([1, 2, 3, 9])
    assert values == [10, 11, 12] and node.key == [3]        # match ends inside [3, 4]: split again
    assert c.match_prefix([7])[0] == []


def test_page_size_aligns_keys():
    c = RadixCache(page_size=4)
    c.insert(list(range(10)))                                # only 8 tokens (two pages) stored
    assert c.total_size() == 8
    assert c.match_prefix([0, 1, 2, 3, 4, 5, 99, 7])[0] == [0, 1, 2, 3]   # partial page does not count
    with pytest.raises(ValueError):
        RadixCache(page_size=0)


def test_locked_nodes_survive_eviction_lru_order():
    freed = []
    c = RadixCache(on_evict=freed.extend)
    c.insert([1, 2, 3])
    c.insert([4, 5])
    c.insert([6])
    _, node = c.match_prefix([1, 2, 3])                      # most recent, and locked
    c.inc_lock_ref(node)
    c.match_prefix([6])
    assert c.evictable_size == 3 and c.protected_size == 3
    assert c.evict(100) == 3 and freed == [4, 5, 6]          # LRU first: [4,5] then [6]
    assert c.total_size() == 3
    c.dec_lock_ref(node)
    with pytest.raises(ValueError):
        c.dec_lock_ref(node)
    assert c.evict(1) == 3 and c.total_size() == 0


def test_longest_prefix_first_order():
    c = RadixCache()
    c.insert([1, 2, 3, 4, 5])
    waiting = [[9, 9], [1, 2, 7], [1, 2, 3, 4, 8], [1, 5]]
    assert longest_prefix_first(waiting, c) == [2, 1, 3, 0]


def random_trace(seed: int, n: int = 200) -> list[list[int]]:
    rng, seqs = random.Random(seed), []
    for _ in range(n):
        if seqs and rng.random() < 0.7:
            base = rng.choice(seqs)
            seqs.append(base[:rng.randint(0, len(base))] + [rng.randrange(6) for _ in range(rng.randint(0, 20))])
        else:
            seqs.append([rng.randrange(6) for _ in range(rng.randint(1, 30))])
    return seqs


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("page_size", [1, 4])
def test_agrees_with_sglang_radix_cache(page_size, policy):
    from common.peers.sglang_radix import SGLangRadix
    seed = random.randrange(10**6)
    ours = RadixCache(page_size, eviction_policy=policy)
    theirs = SGLangRadix(page_size, eviction_policy=policy)
    for i, seq in enumerate(random_trace(seed)):
        (v1, n1), (v2, n2) = ours.match_prefix(seq), theirs.match_prefix(seq)
        assert v1 == v2, f"seed {seed} step {i}: match differs"
        if i % 7 == 0:                                       # lock a running request's path
            ours.inc_lock_ref(n1), theirs.inc_lock_ref(n2)
        assert ours.insert(seq) == theirs.insert(seq), f"seed {seed} step {i}: insert differs"
        if i % 40 == 39:
            assert ours.evict(50) == theirs.evict(50), f"seed {seed} step {i}: evict differs"
        assert (ours.total_size(), ours.evictable_size, ours.protected_size) == \
               (theirs.total_size(), theirs.evictable_size, theirs.protected_size), f"seed {seed} step {i}"


def hot_tokens_kept(cache: RadixCache) -> int:
    """Insert a popular document 5 times, then 3 cold ones once each, evict one document's worth of tokens:
    how many of the hot document's tokens are still cached."""
    hot, cold = list(range(100, 140)), [list(range(1000 * k, 1000 * k + 40)) for k in range(1, 4)]
    for _ in range(5):
        cache.insert(hot)
    for doc in cold:
        cache.insert(doc)
    cache.evict(40)
    return len(cache.match_prefix(hot)[0])


def test_lfu_keeps_a_hot_prefix_that_lru_evicts():
    """A popular document inserted often but not recently: LRU evicts it, LFU keeps it."""
    assert hot_tokens_kept(RadixCache(eviction_policy="lru")) == 0
    assert hot_tokens_kept(RadixCache(eviction_policy="lfu")) == 40


def test_lrfu_spans_lfu_and_lru():
    """λ → 0 orders like LFU and a large λ like LRU on the same hot/cold pattern."""
    assert hot_tokens_kept(RadixCache(eviction_policy="lrfu", lrfu_lambda=0.0)) == 40
    assert hot_tokens_kept(RadixCache(eviction_policy="lrfu", lrfu_lambda=10.0)) == 0


@pytest.mark.parametrize("bad", [dict(eviction_policy="fifo"), dict(eviction_policy="lrfu", lrfu_lambda=-1)])
def test_bad_eviction_settings_are_refused(bad):
    with pytest.raises(ValueError):
        RadixCache(**bad)
