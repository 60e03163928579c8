"""Automatic prefix caching with chained block hashes (vLLM's scheme).

A FULL block is identified by hash(parent block's hash, its own token ids): equal hashes mean
equal whole prefixes, so a lookup walks a prompt block by block and stops at the first miss.
Partial blocks are never cached (their content still changes). The cache holds one reference on
every block it maps; a cached block nobody else uses is *evictable*, kept in LRU order and reused
only when the free list runs dry.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from .block_allocator import BlockAllocator

ROOT_HASH = 0


def block_hash(parent_hash: int, token_ids: Sequence[int]) -> int:
    """The chained hash of one full block (Python's tuple hash: deterministic for ints)."""
    return hash((parent_hash, tuple(token_ids)))


def chain_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Hashes of every full block of `token_ids`, each chained to the one before."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes, parent = [], ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start:start + block_size])
        hashes.append(parent)
    return hashes


class PrefixCache:
    """hash → block map over an allocator, with an LRU of evictable (cache-only) blocks."""

    def __init__(self, allocator: BlockAllocator) -> None:
        self.allocator = allocator
        self._block_of: dict[int, int] = {}
        self._hash_of: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self.num_evictions = 0

    def __len__(self) -> int:
        return len(self._block_of)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def is_cached(self, block: int) -> bool:
        return block in self._hash_of

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Blocks of the longest cached chain prefix of `hashes` (no reference taken)."""
        blocks = []
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def acquire(self, block: int) -> None:
        """A sequence starts using a cached block: one more reference, no longer evictable."""
        self._evictable.pop(block, None)
        self.allocator.incref(block)

    def register(self, h: int, block: int) -> bool:
        """Map hash → block (the cache takes a reference). False if the hash or block is taken."""
        if h in self._block_of or block in self._hash_of:
            return False
        self._block_of[h] = block
        self._hash_of[block] = h
        self.allocator.incref(block)
        return True

    def release(self, block: int) -> None:
        """A sequence drops a block; a cached block left with only the cache's reference
        becomes evictable (most recently used end)."""
        left = self.allocator.decref(block)
        if left == 1 and block in self._hash_of:
            self._evictable[block] = None

    def evict_one(self) -> int:
        """Drop the least recently used evictable block back to the free list; returns it."""
        if not self._evictable:
            raise RuntimeError("no evictable cached block")
        block, _ = self._evictable.popitem(last=False)
        del self._block_of[self._hash_of.pop(block)]
        self.allocator.decref(block)
        self.num_evictions += 1
        return block
