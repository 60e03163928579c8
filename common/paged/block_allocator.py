"""A pool of fixed-size KV blocks: a free list plus one reference count per block.

Paging makes KV memory allocation O(1) and fragmentation-free (chapter 6): a sequence owns a
list of block ids (its block table) instead of one max-length slab. Reference counts let several
sequences share a block (forked samples, prefix-cache hits) and return it only when the last
user lets go.
"""
from __future__ import annotations

from collections import deque


class NoFreeBlocksError(RuntimeError):
    """The pool is empty: the scheduler must wait, preempt or evict.

    定义于 第6章 §6.3.2
    """


class BlockAllocator:
    """Hands out block ids 0..num_blocks-1; `decref` to zero puts a block back on the free list.

    定义于 第6章 §6.3.2
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A free block with reference count 1."""
        if not self._free:
            raise NoFreeBlocksError(f"all {self.num_blocks} blocks are in use")
        block = self._free.popleft()
        self._ref[block] = 1
        return block

    def _check(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block {block} outside the pool of {self.num_blocks}")

    def incref(self, block: int) -> None:
        self._check(block)
        if self._ref[block] == 0:
            raise ValueError(f"block {block} is free; allocate it before sharing it")
        self._ref[block] += 1

    def decref(self, block: int) -> int:
        """Drop one reference; at zero the block returns to the free list. Returns the new count."""
        self._check(block)
        if self._ref[block] == 0:
            raise ValueError(f"block {block} is already free (double free)")
        self._ref[block] -= 1
        if self._ref[block] == 0:
            self._free.append(block)
        return self._ref[block]

    def ref_count(self, block: int) -> int:
        self._check(block)
        return self._ref[block]
