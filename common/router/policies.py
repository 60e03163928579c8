"""Routing policies: which engine replica gets a request.

- round_robin: replicas in turn; spreads load evenly and scatters each conversation's prefix.
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
"""
from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from typing import Protocol, Sequence

POLICIES = ("round_robin", "session", "prefix")


class Policy(Protocol):
    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int]) -> int: ...


def least_loaded(loads: Sequence[int], start: int = 0) -> int:
    """Index of the smallest load; ties broken by rotating from `start` so equal replicas share."""
    n = len(loads)
    return min(((start + i) % n for i in range(n)), key=lambda i: loads[i])


class RoundRobin:
    def __init__(self, num_replicas: int):
        _check_replicas(num_replicas)
        self._next = itertools.cycle(range(num_replicas))

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int]) -> int:
        return next(self._next)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and on every run."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class SessionSticky:
    """hash(session) mod N; requests without a session go round-robin."""

    def __init__(self, num_replicas: int):
        _check_replicas(num_replicas)
        self.n = num_replicas
        self._fallback = RoundRobin(num_replicas)

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int]) -> int:
        if not session:
            return self._fallback.choose(key, session, loads)
        return stable_hash(session) % self.n


def block_hashes(key: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of `key`: block i's hash covers key[: (i + 1) * block_size]."""
    out, parent = [], b""
    for start in range(0, len(key) - block_size + 1, block_size):
        block = ",".join(map(str, key[start:start + block_size])).encode()
        parent = hashlib.blake2b(parent + b"|" + block, digest_size=8).digest()
        out.append(int.from_bytes(parent, "little"))
    return out


class PrefixIndex:
    """The block hashes one replica served recently, LRU-bounded like the replica's own cache."""

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
    requests than the least-loaded one (SGLang's router has the same two knobs)."""

    def __init__(self, num_replicas: int, block_size: int = 16, min_match: float = 0.1, balance_abs: int = 8,
                 capacity_blocks: int = 1 << 16):
        _check_replicas(num_replicas)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size, self.min_match, self.balance_abs = block_size, min_match, balance_abs
        self.indexes = [PrefixIndex(capacity_blocks) for _ in range(num_replicas)]
        self._turn = 0
        self.decisions = {"cache": 0, "load": 0}

    def choose(self, key: Sequence[int], session: str | None, loads: Sequence[int]) -> int:
        hashes = block_hashes(key, self.block_size)
        matches = [idx.match(hashes) for idx in self.indexes]
        best = max(range(len(matches)), key=lambda i: (matches[i], -loads[i]))
        idle = least_loaded(loads, self._turn)
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
    if name == "round_robin":
        return RoundRobin(num_replicas)
    if name == "session":
        return SessionSticky(num_replicas)
    if name == "prefix":
        return PrefixAware(num_replicas, **kwargs)
    raise ValueError(f"unknown policy {name!r}; use one of {', '.join(POLICIES)}")


def _check_replicas(n: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one replica, got {n}")
