"""Trace replays: block hashing finds whole shared blocks only, the radix tree every shared
token; longest-prefix-first never reuses less than FCFS on a thrashing queue."""
from __future__ import annotations

import random

from common.paged.radix_cache import RadixCache
from common.sim.cache_hits import block_cache_hits, radix_cache_hits, schedule_hits
from common.paged.traces import agent_trace, multi_turn_trace, rag_trace, shared_system_trace


def brute_force_hits(trace, block_size=None):
    """Longest common prefix with any earlier request (all but the last token), block-rounded."""
    hits = []
    for i, t in enumerate(trace):
        best = 0
        for prev in trace[:i]:
            n = 0
            while n < min(len(prev), len(t) - 1) and prev[n] == t[n]:
                n += 1
            best = max(best, n)
        hits.append(best if block_size is None else best // block_size * block_size)
    return hits


def test_replays_match_brute_force():
    seed = random.randrange(10**6)
    for trace in (shared_system_trace(12, 37, (1, 30), seed), rag_trace(15, 3, 50, 7, seed),
                  multi_turn_trace(3, 3, 9, 13, 5, seed), agent_trace(3, 5, (3, 20), 20, 0.4, seed)):
        assert radix_cache_hits(trace, RadixCache()) == brute_force_hits(trace), seed
        assert block_cache_hits(trace, 8) == brute_force_hits(trace, 8), seed


def test_system_prompt_shorter_than_a_block_never_hits():
    trace = shared_system_trace(10, 7, (5, 9), seed=1)
    assert sum(block_cache_hits(trace, 16)) == 0
    assert sum(radix_cache_hits(trace, RadixCache())) == 7 * 9


def test_lpm_not_worse_than_fcfs_under_small_budget():
    rng = random.Random(3)
    queue = rag_trace(60, 6, 200, 10, seed=3)
    rng.shuffle(queue)
    fcfs = schedule_hits(queue, RadixCache(), capacity=500, batch_size=4, policy="fcfs")
    lpm = schedule_hits(queue, RadixCache(), capacity=500, batch_size=4, policy="lpm")
    assert lpm > fcfs
