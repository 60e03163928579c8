"""Lab 6 tests: the block pool and table operations against hand-checked invariants, the hash chain
and radix tree against brute-force oracles, paged attention against torch SDPA — fresh random
inputs every run (labs/conftest.py seeds `random` and torch per test and prints the seed when a
test fails: rerun it with TEST_SEED=<seed>)."""
from __future__ import annotations

import hashlib
import random
from array import array

import pytest
import torch
import torch.nn.functional as F


def test_pool_allocate_refcount_free(impl):
    n = random.randint(3, 8)
    pool = impl.BlockAllocator(n)
    blocks = [pool.allocate() for _ in range(n)]
    assert sorted(blocks) == list(range(n)) and pool.num_free == 0
    assert all(pool.ref_count(b) == 1 for b in blocks)
    with pytest.raises(RuntimeError):
        pool.allocate()
    b = random.choice(blocks)
    pool.incref(b)
    assert pool.ref_count(b) == 2 and pool.decref(b) == 1 and pool.num_free == 0
    assert pool.decref(b) == 0 and pool.num_free == 1
    with pytest.raises(ValueError):
        pool.decref(b)
    with pytest.raises(ValueError):
        pool.incref(b)
    assert pool.allocate() == b
    with pytest.raises(ValueError):
        impl.BlockAllocator(0)


def test_fork_shares_every_block(impl):
    pool = impl.BlockAllocator(10)
    table = [pool.allocate() for _ in range(random.randint(1, 5))]
    child = impl.fork_table(pool, table)
    assert child == table and child is not table
    assert all(pool.ref_count(b) == 2 for b in table)


def test_append_grows_table_without_copies(impl):
    bs = random.choice([1, 2, 4, 16])
    pool = impl.BlockAllocator(64)
    n = random.randint(1, 5 * bs)
    table = [pool.allocate() for _ in range(-(-n // bs))]
    after = n + random.randint(0, 6 * bs)
    assert impl.append_slots(pool, table, n, after, bs) == []
    assert len(table) == -(-after // bs) and len(set(table)) == len(table)
    assert pool.num_free == 64 - len(table)
    with pytest.raises(ValueError):
        impl.append_slots(pool, table, after, after - 1, bs)


def test_copy_on_write_only_for_shared_partial_last_block(impl):
    bs = random.choice([4, 8])
    pool = impl.BlockAllocator(32)
    n = 2 * bs + random.randint(1, bs - 1)          # last block partly filled
    parent = [pool.allocate() for _ in range(3)]
    child = impl.fork_table(pool, parent)
    copies = impl.append_slots(pool, child, n, n + 1, bs)
    assert len(copies) == 1 and copies[0][0] == parent[2] and copies[0][1] == child[2] != parent[2]
    assert child[:2] == parent[:2]                   # full blocks stay shared
    assert pool.ref_count(parent[2]) == 1 and pool.ref_count(child[2]) == 1 and pool.ref_count(parent[0]) == 2
    assert impl.append_slots(pool, parent, n, n + 1, bs) == []   # now the parent is the only user

    full = [pool.allocate() for _ in range(2)]       # exactly two full blocks
    twin = impl.fork_table(pool, full)
    assert impl.append_slots(pool, twin, 2 * bs, 2 * bs + 1, bs) == []
    assert twin[:2] == full and len(twin) == 3


def _oracle_hashes(tokens, bs):
    out, parent = [], b""
    for i in range(len(tokens) // bs):
        parent = hashlib.sha256(parent + array("q", tokens[i * bs:(i + 1) * bs]).tobytes()).digest()
        out.append(parent)
    return out


def test_prefix_hash_chain(impl):
    bs = random.choice([2, 4, 16])
    tokens = [random.randrange(1000) for _ in range(random.randint(0, 6 * bs))]
    assert impl.chain_hashes(tokens, bs) == _oracle_hashes(tokens, bs)
    if len(tokens) >= 2 * bs:
        other = [tokens[0] + 1] + tokens[1:]
        mine, theirs = impl.chain_hashes(tokens, bs), impl.chain_hashes(other, bs)
        assert all(a != b for a, b in zip(mine, theirs))   # one changed token changes every later hash
    with pytest.raises(ValueError):
        impl.chain_hashes(tokens, 0)


def _lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_radix_tree_matches_brute_force(impl):
    tree, seen = impl.RadixCache(), []
    for _ in range(60):
        if seen and random.random() < 0.7:
            base = random.choice(seen)
            seq = base[:random.randint(0, len(base))] + [random.randrange(4) for _ in range(random.randint(0, 8))]
        else:
            seq = [random.randrange(4) for _ in range(random.randint(1, 12))]
        best = max((_lcp(seq, s) for s in seen), default=0)
        values, _ = tree.match_prefix(seq)
        assert values == seq[:best]
        assert tree.insert(seq) == best
        seen.append(seq)
    assert tree.total_size() == len({tuple(s[:i]) for s in seen for i in range(1, len(s) + 1)})


def test_radix_split_values_and_locked_eviction(impl):
    tree = impl.RadixCache()
    tree.insert([1, 2, 3, 4], [10, 11, 12, 13])
    tree.insert([5, 6])
    tree.insert([7])
    values, node = tree.match_prefix([1, 2, 9])       # ends inside the edge [1,2,3,4]: split
    assert values == [10, 11] and tree.total_size() == 7
    tree.inc_lock_ref(node)
    tree.match_prefix([7])                            # [5,6] is now the least recently used leaf
    assert tree.evict(1) == 2 and tree.match_prefix([5, 6])[0] == []
    assert tree.evict(100) == 3                       # [3,4] and [7]; the locked [1,2] survives
    assert tree.total_size() == 2 and tree.match_prefix([1, 2])[0] == [10, 11]
    tree.dec_lock_ref(node)
    assert tree.evict(100) == 2 and tree.total_size() == 0


def test_lfu_eviction_keeps_the_popular_prefix(impl):
    """A document inserted k times but not recently: LRU evicts it first, LFU evicts the cold ones."""
    hot = [random.randrange(100, 200) for _ in range(random.randint(3, 8))]
    cold = [[1000 * (i + 1) + j for j in range(random.randint(2, 6))] for i in range(3)]
    for policy, hot_survives in (("lru", False), ("lfu", True)):
        tree = impl.RadixCache(eviction_policy=policy)
        for _ in range(random.randint(2, 5)):
            tree.insert(hot)
        for doc in cold:
            tree.insert(doc)
        evicted = tree.evict(1)
        assert evicted == (len(cold[0]) if hot_survives else len(hot)), policy
        assert (tree.match_prefix(hot)[0] == hot) == hot_survives, policy
    with pytest.raises(ValueError):
        impl.RadixCache(eviction_policy="fifo")


def test_lfu_matches_oracle_order(impl):
    """Random inserts into disjoint documents: LFU evicts in (inserts, last insert) order."""
    docs = [[1000 * (i + 1) + j for j in range(3)] for i in range(6)]
    tree, count, last = impl.RadixCache(eviction_policy="lfu"), [0] * 6, [0] * 6
    for t in range(30):
        i = random.randrange(6)
        tree.insert(docs[i])
        count[i] += 1
        last[i] = t
    order = sorted((i for i in range(6) if count[i]), key=lambda i: (count[i], last[i]))
    for i in order:
        assert tree.evict(1) == 3
        assert tree.match_prefix(docs[i])[0] == [], f"expected doc {i} (count {count[i]}) to go next"


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_paged_attention_matches_sdpa(impl, hq, hkv):
    bs, d = random.choice([4, 8, 16]), 32
    lens = [random.randint(1, 5 * bs) for _ in range(random.randint(1, 4))]
    nblocks = sum(-(-n // bs) for n in lens) + 3
    kc, vc = torch.randn(nblocks, bs, hkv, d), torch.randn(nblocks, bs, hkv, d)
    q = torch.randn(len(lens), hq, d) * 3               # large scores: the running max matters
    perm = torch.randperm(nblocks).tolist()
    width = max(-(-n // bs) for n in lens)
    tables = torch.zeros(len(lens), width, dtype=torch.long)
    expected = []
    for b, n in enumerate(lens):
        blocks = [perm.pop() for _ in range(-(-n // bs))]
        tables[b, :len(blocks)] = torch.tensor(blocks)
        k = kc[blocks].flatten(0, 1)[:n].transpose(0, 1)[None]
        v = vc[blocks].flatten(0, 1)[:n].transpose(0, 1)[None]
        expected.append(F.scaled_dot_product_attention(q[b:b + 1, :, None], k, v, enable_gqa=True)[0, :, 0])
    out = impl.paged_attention_reference(q, kc, vc, tables, torch.tensor(lens))
    assert out.shape == q.shape
    assert torch.allclose(out, torch.stack(expected), atol=1e-5, rtol=1e-4)
