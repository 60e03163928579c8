"""A radix tree of cached token prefixes (SGLang's RadixAttention cache), from scratch.

Edges carry token sequences; a lookup walks down while tokens agree and SPLITS an edge where a
match ends inside it, so any shared prefix — not only whole blocks — is found. Values are the KV
slot ids of the tokens. With page_size N, keys are cut to whole pages and edges split only at
page boundaries. Nodes used by running requests are locked (lock_ref > 0, counted up the path);
eviction removes unlocked leaves in least-recently-used order, parents becoming leaves in turn.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Callable, Sequence


class RadixNode:
    _ids = itertools.count()

    def __init__(self, key: list[int], value: list[int], parent: "RadixNode | None") -> None:
        self.key, self.value, self.parent = key, value, parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.lock_ref = 0
        self.last_access = 0
        self.id = next(RadixNode._ids)

    def __lt__(self, other: "RadixNode") -> bool:
        return (self.last_access, self.id) < (other.last_access, other.id)


class RadixCache:
    def __init__(self, page_size: int = 1, on_evict: Callable[[list[int]], None] | None = None) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.page_size = page_size
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

    def _aligned(self, key: Sequence[int]) -> list[int]:
        return list(key[:len(key) - len(key) % self.page_size])

    def _split(self, child: RadixNode, at: int) -> RadixNode:
        """Cut child's edge after `at` tokens; the new upper node is returned."""
        upper = RadixNode(child.key[:at], child.value[:at], child.parent)
        upper.lock_ref, upper.last_access = child.lock_ref, child.last_access
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
        if key:
            leaf = RadixNode(key, value, node)
            leaf.last_access = now
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
        """Remove unlocked leaves, least recently used first, until num_tokens are freed."""
        heap = self._evictable_leaves()
        heapq.heapify(heap)
        evicted = 0
        while evicted < num_tokens and heap:
            leaf = heapq.heappop(heap)
            if self.on_evict is not None:
                self.on_evict(leaf.value)
            evicted += len(leaf.key)
            parent = leaf.parent
            del parent.children[self._child_key(leaf.key)]
            self.evictable_size -= len(leaf.key)
            if not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
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
    stable so equal matches keep arrival order."""
    lengths = [len(cache.match_prefix(tokens)[0]) for tokens in waiting]
    return sorted(range(len(waiting)), key=lambda i: -lengths[i])
