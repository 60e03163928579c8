"""A radix tree of cached token prefixes (SGLang's RadixAttention cache), from scratch.

Edges carry token sequences; a lookup walks down while tokens agree and SPLITS an edge where a
match ends inside it, so any shared prefix — not only whole blocks — is found. Values are the KV
slot ids of the tokens. With page_size N, keys are cut to whole pages and edges split only at
page boundaries. Nodes used by running requests are locked (lock_ref > 0, counted up the path);
eviction removes unlocked leaves, parents becoming leaves in turn, in the order of an eviction policy:
- "lru": least recently used first (SGLang's default);
- "lfu": fewest inserts through the node first, ties by recency (SGLang's `--radix-eviction-policy lfu`:
  priority (hit_count, last_access_time), hit_count counted on insert);
- "lrfu": a recency-weighted frequency (Lee et al., 2001): each insert through a node adds 1 to a score
  that halves every 1/λ clock ticks, so λ → 0 is LFU and a large λ is LRU.
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable, Sequence

EVICTION_POLICIES = ("lru", "lfu", "lrfu")


class RadixNode:
    """A radix-tree node: a run of token ids (key), their KV slots (value), children, lock count and eviction data.

    定义于 第6章 §6.3.4
    """
    _ids = itertools.count()

    def __init__(self, key: list[int], value: list[int], parent: "RadixNode | None") -> None:
        self.key, self.value, self.parent = key, value, parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.lock_ref = 0
        self.last_access = 0
        self.hit_count = 0          # inserts that went through this node (LFU)
        self.last_hit = 0           # clock of the last insert through this node (LRFU)
        self.log_score = -math.inf  # log2 of the LRFU score at last_hit
        self.id = next(RadixNode._ids)


class RadixCache:
    """SGLang-style radix cache: longest-prefix match, insert, and eviction of unused leaves.

    定义于 第6章 §6.3.4
    """
    def __init__(self, page_size: int = 1, on_evict: Callable[[list[int]], None] | None = None,
                 eviction_policy: str = "lru", lrfu_lambda: float = 0.05) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if eviction_policy not in EVICTION_POLICIES:
            raise ValueError(f"eviction_policy must be one of {EVICTION_POLICIES}, got {eviction_policy!r}")
        if lrfu_lambda < 0:
            raise ValueError(f"lrfu_lambda must be >= 0, got {lrfu_lambda}")
        self.page_size = page_size
        self.eviction_policy = eviction_policy
        self.lrfu_lambda = lrfu_lambda
        self.on_evict = on_evict
        self._clock = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.root = RadixNode([], [], None)
        self.root.lock_ref = 1
        self.evictable_size = 0   # tokens in unlocked nodes
        self.protected_size = 0   # tokens in locked nodes

    # ---- helpers -------------------------------------------------------------------------
    def _child_key(self, key: Sequence[int]) -> tuple[int, ...]:
        return tuple(key[:self.page_size])

    def _match_len(self, a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n - n % self.page_size

    def _hit(self, node: RadixNode, now: int) -> None:
        """An insert went through `node` at clock `now`: count it for LFU and LRFU."""
        node.hit_count += 1
        decayed = node.log_score - self.lrfu_lambda * (now - node.last_hit)
        node.log_score = math.log2(1.0 + 2.0 ** decayed)   # score ← 1 + score·2^(−λΔt)
        node.last_hit = node.last_access = now

    def _priority(self, node: RadixNode) -> tuple:
        """Eviction order key: the smallest is evicted first."""
        if self.eviction_policy == "lfu":
            return node.hit_count, node.last_access, node.id
        if self.eviction_policy == "lrfu":
            # score·2^(−λ(now − t)) ordered at a common `now` ⇔ log2(score) + λ·t
            return node.log_score + self.lrfu_lambda * node.last_hit, node.id
        return node.last_access, node.id

    def _aligned(self, key: Sequence[int]) -> list[int]:
        return list(key[:len(key) - len(key) % self.page_size])

    def _split(self, child: RadixNode, at: int) -> RadixNode:
        """Cut child's edge after `at` tokens; the new upper node is returned."""
        upper = RadixNode(child.key[:at], child.value[:at], child.parent)
        upper.lock_ref, upper.last_access = child.lock_ref, child.last_access
        upper.hit_count, upper.last_hit, upper.log_score = child.hit_count, child.last_hit, child.log_score
        upper.parent.children[self._child_key(upper.key)] = upper
        child.key, child.value, child.parent = child.key[at:], child.value[at:], upper
        upper.children[self._child_key(child.key)] = child
        return upper

    # ---- public API ----------------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int]) -> tuple[list[int], RadixNode]:
        """(KV slot ids of the longest cached prefix, its last node). Refreshes LRU times."""
        key = self._aligned(tokens)
        now = next(self._clock)
        node, value = self.root, []
        node.last_access = now
        while key and self._child_key(key) in node.children:
            child = node.children[self._child_key(key)]
            child.last_access = now
            n = self._match_len(child.key, key)
            if n < len(child.key):
                node = self._split(child, n)
                value += node.value
                break
            value += child.value
            node, key = child, key[n:]
        return value, node

    def insert(self, tokens: Sequence[int], value: Sequence[int] | None = None) -> int:
        """Add a sequence (value: its KV slot ids, default the token ids); returns how many of its
        tokens were cached already (the caller frees those duplicate slots)."""
        key = self._aligned(tokens)
        value = list(tokens if value is None else value)[:len(key)]
        if len(value) != len(key):
            raise ValueError(f"{len(value)} values for {len(key)} tokens")
        now = next(self._clock)
        node, prefix = self.root, 0
        node.last_access = now
        while key and self._child_key(key) in node.children:
            child = node.children[self._child_key(key)]
            child.last_access = now
            n = self._match_len(child.key, key)
            prefix += n
            key, value = key[n:], value[n:]
            node = self._split(child, n) if n < len(child.key) else child
            self._hit(node, now)
        if key:
            leaf = RadixNode(key, value, node)
            self._hit(leaf, now)
            node.children[self._child_key(key)] = leaf
            self.evictable_size += len(key)
        return prefix

    def inc_lock_ref(self, node: RadixNode) -> None:
        """A running request uses the path root → node: protect it from eviction."""
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: RadixNode) -> None:
        while node is not self.root:
            if node.lock_ref <= 0:
                raise ValueError("dec_lock_ref on an unlocked node")
            if node.lock_ref == 1:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
            node.lock_ref -= 1
            node = node.parent

    def _evictable_leaves(self) -> list[RadixNode]:
        leaves, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if not node.children and node.lock_ref == 0:
                leaves.append(node)
            stack.extend(node.children.values())
        return leaves

    def evict(self, num_tokens: int) -> int:
        """Remove unlocked leaves in the policy's order until num_tokens are freed."""
        heap = [(self._priority(leaf), leaf) for leaf in self._evictable_leaves()]
        heapq.heapify(heap)
        evicted = 0
        while evicted < num_tokens and heap:
            _, leaf = heapq.heappop(heap)
            if self.on_evict is not None:
                self.on_evict(leaf.value)
            evicted += len(leaf.key)
            parent = leaf.parent
            del parent.children[self._child_key(leaf.key)]
            self.evictable_size -= len(leaf.key)
            if not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (self._priority(parent), parent))
        return evicted

    def total_size(self) -> int:
        total, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            total += len(node.key)
            stack.extend(node.children.values())
        return total

    def num_nodes(self) -> int:
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count - 1


def longest_prefix_first(waiting: Sequence[Sequence[int]], cache: RadixCache) -> list[int]:
    """Indices of `waiting` sorted by cached prefix length, longest first (SGLang's "lpm"),
    stable so equal matches keep arrival order.

    定义于 第6章 §6.3.4
    """
    lengths = [len(cache.match_prefix(tokens)[0]) for tokens in waiting]
    return sorted(range(len(waiting)), key=lambda i: -lengths[i])
