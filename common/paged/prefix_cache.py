"""Automatic prefix caching with chained block keys (vLLM's scheme, common.paged.block_hash).

A FULL block is keyed by sha256(parent block's key, its own token ids), so a lookup walks a prompt
block by block and stops at the first miss. Partial blocks are never cached (their content still
changes). A hit is trusted only after a check that cannot collide: the cached block's tokens
equal the prompt's block, and it was computed on top of exactly the cached block matched just
before it (each registration gets a serial number; a child remembers its parent's). So even a
forced key collision returns no wrong KV: it only costs a miss.

The cache holds one reference on every block it maps; a cached block nobody else uses is
*evictable*, kept in LRU order and reused only when the free list runs dry.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from .block_allocator import BlockAllocator

ROOT_SERIAL = 0   # the "parent" of a prompt's first block


@dataclass(frozen=True)
class CachedBlock:
    """A cached full block: its chained key, tokens and where it sits in the prefix chain.

    定义于 第6章 §6.7.3
    """
    key: bytes
    tokens: tuple[int, ...]
    parent_serial: int          # serial of the cached block it extends (ROOT_SERIAL for a first block)
    serial: int                 # unique per registration: a reused block id gets a new one


class PrefixCache:
    """key → block map over an allocator, with an LRU of evictable (cache-only) blocks.

    定义于 第6章 §6.7.3
    """

    def __init__(self, allocator: BlockAllocator) -> None:
        self.allocator = allocator
        self._block_of: dict[bytes, int] = {}
        self._entry_of: dict[int, CachedBlock] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._next_serial = ROOT_SERIAL + 1
        self.num_evictions = 0

    def __len__(self) -> int:
        return len(self._block_of)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def is_cached(self, block: int) -> bool:
        return block in self._entry_of

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def serial(self, block: int) -> int:
        return self._entry_of[block].serial

    def lookup(self, keys: Sequence[bytes], blocks_tokens: Sequence[Sequence[int]]) -> list[int]:
        """Blocks of the longest verified cached prefix (no reference taken): each hit's tokens and
        parent must match, not only its key."""
        blocks, parent = [], ROOT_SERIAL
        for key, tokens in zip(keys, blocks_tokens):
            block = self._block_of.get(key)
            if block is None:
                break
            entry = self._entry_of[block]
            if entry.parent_serial != parent or entry.tokens != tuple(tokens):
                break                      # a key collision: treat as a miss
            blocks.append(block)
            parent = entry.serial
        return blocks

    def acquire(self, block: int) -> None:
        """A sequence starts using a cached block: one more reference, no longer evictable."""
        self._evictable.pop(block, None)
        self.allocator.incref(block)

    def register(self, key: bytes, block: int, tokens: Sequence[int], parent_serial: int) -> int | None:
        """Map key → block (the cache takes a reference). Returns the serial a child block must
        chain to: the new entry's, or that of an equal block cached already; None when the key is
        taken by different content (a collision) or the block is cached under another key."""
        tokens = tuple(tokens)
        existing = self._block_of.get(key)
        if existing is not None:
            entry = self._entry_of[existing]
            same = entry.tokens == tokens and entry.parent_serial == parent_serial
            return entry.serial if same else None
        if block in self._entry_of:
            return None
        entry = CachedBlock(key, tokens, parent_serial, self._next_serial)
        self._next_serial += 1
        self._block_of[key] = block
        self._entry_of[block] = entry
        self.allocator.incref(block)
        return entry.serial

    def release(self, block: int) -> None:
        """A sequence drops a block; a cached block left with only the cache's reference
        becomes evictable (most recently used end)."""
        left = self.allocator.decref(block)
        if left == 1 and block in self._entry_of:
            self._evictable[block] = None

    def evict_one(self) -> int:
        """Drop the least recently used evictable block back to the free list; returns it."""
        if not self._evictable:
            raise RuntimeError("no evictable cached block")
        block, _ = self._evictable.popitem(last=False)
        del self._block_of[self._entry_of.pop(block).key]
        self.allocator.decref(block)
        self.num_evictions += 1
        return block
