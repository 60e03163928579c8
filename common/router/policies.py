"""Routing policies: which engine replica gets a request.

- round_robin: replicas in turn; spreads load evenly and scatters each conversation's prefix.
- least_loaded: the replica with the fewest requests in flight.
- session: a stable hash of the session id (the OpenAI `user` field) picks the replica, so every
  turn of a conversation lands where its prefix is cached. The hash is blake2b, not Python's
  `hash()`: str hashes are salted per process (PYTHONHASHSEED), so two router processes (or one
  restarted router) would disagree about where a session lives.
- prefix: cache-aware routing in the spirit of SGLang's router. Each replica keeps an index of the
  chained hashes of the prompt blocks it served recently (the same chaining as vLLM's prefix cache:
  a block's hash covers every token before it). A request goes to the replica that matches its
  longest leading run of blocks, unless that replica is overloaded or the match is too short; then
  it goes to the least-loaded replica. Requests without a match teach nobody anything, so the
  index is updated after every dispatch.

Every policy takes `eligible`: the replicas it may pick (the healthy ones not yet tried for this
request; None = all). A dead replica fails fast and so has 0 requests in flight: without this
filter least-loaded routing would prefer it and session routing would pin its users to it.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol, Sequence

from ..paged.block_hash import chain_hashes as block_hashes  # the prefix cache's own keys

POLICIES = ("round_robin", "least_loaded", "session", "prefix")


class Policy(Protocol):
    """What a routing policy does: pick a replica for a request.

    定义于 第7章 §7.4.6
    """
    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int],
               eligible: Sequence[int] | None = None) -> int: ...


def _allowed(n: int, eligible: Sequence[int] | None) -> list[int]:
    """The replica indices a policy may pick, sorted; a clear error when there is none."""
    allowed = list(range(n)) if eligible is None else sorted(set(eligible))
    if not allowed or allowed[0] < 0 or allowed[-1] >= n:
        raise ValueError(f"no eligible replica among {n} (eligible={list(eligible or [])})")
    return allowed


def least_loaded(loads: Sequence[int], start: int = 0, eligible: Sequence[int] | None = None) -> int:
    """Index of the smallest load among `eligible`; ties broken by rotating from `start` so equal replicas share.

    定义于 第7章 §7.4.6
    """
    n = len(loads)
    allowed = set(_allowed(n, eligible))
    return min(((start + i) % n for i in range(n) if (start + i) % n in allowed), key=lambda i: loads[i])


class RoundRobin:
    """Replicas in turn, blind to the cache: the baseline the cache-aware policy is compared with.

    定义于 第7章 §7.4.6
    """
    def __init__(self, num_replicas: int):
        _check_replicas(num_replicas)
        self.n = num_replicas
        self._next = 0

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int],
               eligible: Sequence[int] | None = None) -> int:
        allowed = set(_allowed(self.n, eligible))
        for step in range(self.n):   # the next eligible replica in the cycle
            i = (self._next + step) % self.n
            if i in allowed:
                self._next = i + 1
                return i
        raise AssertionError("unreachable: _allowed returned a non-empty subset")


class LeastLoaded:
    """Fewest requests in flight; ties rotate.

    定义于 第7章 §7.4.6
    """

    def __init__(self, num_replicas: int):
        _check_replicas(num_replicas)
        self.n = num_replicas
        self._turn = 0

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int],
               eligible: Sequence[int] | None = None) -> int:
        self._turn += 1
        return least_loaded(loads, self._turn - 1, eligible)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and on every run.

    定义于 第7章 §7.4.6
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class SessionSticky:
    """hash(session) mod N; requests without a session go round-robin. When the home replica is not
    eligible (ejected, or already failed this request) the session goes to hash mod the eligible
    ones, so only the sessions of the lost replica move and they all move the same way.

    定义于 第7章 §7.4.6
    """

    def __init__(self, num_replicas: int):
        _check_replicas(num_replicas)
        self.n = num_replicas
        self._fallback = RoundRobin(num_replicas)

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int],
               eligible: Sequence[int] | None = None) -> int:
        if not session:
            return self._fallback.choose(key, session, loads, eligible)
        allowed = _allowed(self.n, eligible)
        home = stable_hash(session) % self.n
        return home if home in allowed else allowed[stable_hash(session) % len(allowed)]


class PrefixIndex:
    """The block hashes one replica served recently, LRU-bounded like the replica's own cache.

    定义于 第7章 §7.4.6
    """

    def __init__(self, capacity_blocks: int):
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading blocks of `hashes` present (a chained hash implies all before it)."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def insert(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._blocks)


class PrefixAware:
    """Longest cached prefix wins; load balancing takes over when the winner is too busy.

    min_match: fraction of the prompt's blocks that must match before the cache outweighs load.
    balance_abs: route by load instead when the best-match replica has this many more in-flight
    requests than the least-loaded one (SGLang's router has the same two knobs).

    定义于 第7章 §7.4.6
    """

    def __init__(self, num_replicas: int, block_size: int = 16, min_match: float = 0.1, balance_abs: int = 8,
                 capacity_blocks: int = 1 << 16):
        _check_replicas(num_replicas)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size, self.min_match, self.balance_abs = block_size, min_match, balance_abs
        self.indexes = [PrefixIndex(capacity_blocks) for _ in range(num_replicas)]
        self._turn = 0
        self.decisions = {"cache": 0, "load": 0}

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int],
               eligible: Sequence[int] | None = None) -> int:
        allowed = _allowed(len(self.indexes), eligible)
        hashes = block_hashes(key, self.block_size)
        matches = [idx.match(hashes) for idx in self.indexes]
        best = max(allowed, key=lambda i: (matches[i], -loads[i]))
        idle = least_loaded(loads, self._turn, allowed)
        self._turn += 1
        enough = hashes and matches[best] >= max(1, self.min_match * len(hashes))
        if enough and loads[best] - loads[idle] < self.balance_abs:
            choice = best
            self.decisions["cache"] += 1
        else:
            choice = idle
            self.decisions["load"] += 1
        self.indexes[choice].insert(hashes)
        return choice


def make_policy(name: str, num_replicas: int, **kwargs) -> Policy:
    """A policy by name (round_robin, least_loaded, session, prefix, ...).

    定义于 第7章 §7.4.6
    """
    if name == "round_robin":
        return RoundRobin(num_replicas)
    if name == "least_loaded":
        return LeastLoaded(num_replicas)
    if name == "session":
        return SessionSticky(num_replicas)
    if name == "prefix":
        return PrefixAware(num_replicas, **kwargs)
    raise ValueError(f"unknown policy {name!r}; use one of {', '.join(POLICIES)}")


def _check_replicas(n: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one replica, got {n}")
