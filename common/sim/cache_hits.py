"""Replay a trace through a prefix cache and count reused tokens (no model, no KV tensors).

Both caches see requests one at a time, the KV of a request is cached when it finishes, and at
least one prompt token is always computed (vLLM and SGLang both keep the last token to produce
logits). The radix replay works with our RadixCache or SGLang's (same small API).
"""
from __future__ import annotations

from typing import Protocol, Sequence

from ..paged.block_manager import BlockManager


def block_cache_hits(trace: Sequence[Sequence[int]], block_size: int, num_blocks: int | None = None) -> list[int]:
    """Cached tokens per request with vLLM-style block hashing (prompt blocks cached after prefill).

    定义于 第6章 §6.7.5
    """
    if num_blocks is None:
        num_blocks = sum(-(-len(t) // block_size) for t in trace) + 1
    manager = BlockManager(num_blocks, block_size, enable_prefix_caching=True)
    hits = []
    for i, tokens in enumerate(trace):
        hits.append(manager.allocate(i, tokens))
        manager.mark_computed(i, tokens, len(tokens))
        manager.free(i)
    return hits


class RadixLike(Protocol):
    """What the simulator needs from a radix cache: ours and SGLang's both fit.

    定义于 第6章 §6.7.5
    """
    def match_prefix(self, tokens: Sequence[int]) -> tuple[list[int], object]: ...
    def insert(self, tokens: Sequence[int], value: Sequence[int] | None = None) -> int: ...
    def evict(self, num_tokens: int) -> int: ...
    def total_size(self) -> int: ...


def radix_cache_hits(trace: Sequence[Sequence[int]], cache: RadixLike, capacity: int | None = None) -> list[int]:
    """Matched tokens per request (match on all but the last token, then insert the request);
    with `capacity`, evict LRU leaves back down to it after each insert.

    定义于 第6章 §6.7.5
    """
    hits = []
    for tokens in trace:
        hits.append(len(cache.match_prefix(tokens[:-1])[0]))
        cache.insert(tokens)
        if capacity is not None and cache.total_size() > capacity:
            cache.evict(cache.total_size() - capacity)
    return hits


def schedule_hits(queue: Sequence[Sequence[int]], cache: RadixLike, capacity: int, batch_size: int,
                  policy: str = "fcfs") -> int:
    """Total reused tokens when a waiting queue is served in batches under a cache budget.
    policy "fcfs": arrival order; "lpm": before each batch, longest cached prefix first.

    定义于 第6章 §6.7.5
    """
    if policy not in ("fcfs", "lpm"):
        raise ValueError(f"policy must be 'fcfs' or 'lpm', got {policy!r}")
    waiting, total = list(queue), 0
    while waiting:
        if policy == "lpm":
            lengths = [len(cache.match_prefix(t[:-1])[0]) for t in waiting]
            order = sorted(range(len(waiting)), key=lambda i: -lengths[i])
            waiting = [waiting[i] for i in order]
        batch, waiting = waiting[:batch_size], waiting[batch_size:]
        total += sum(radix_cache_hits(batch, cache, capacity))
    return total
