"""Per-sequence block tables over a shared block pool: allocate, append, fork, free, prefix hits.

The scheduler talks to this class only in token counts; the KV store applies the physical
consequences (slot mappings to write into, block copies after copy-on-write).
Copy-on-write copies only a shared, partially filled LAST block: full blocks are immutable and
stay shared (the book copies the whole shared prefix on fork; vLLM, like this class, does not).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .block_allocator import BlockAllocator, NoFreeBlocksError
from .block_ops import append_slots, fork_table
from .block_hash import ROOT_HASH, chain_hashes, hash_block
from .prefix_cache import ROOT_SERIAL, PrefixCache


@dataclass
class PrefixCacheStats:
    """Cumulative, counted like vLLM's metrics: queries = prompt tokens looked up, hits = reused.

    定义于 第6章 §6.3.2
    """
    queries: int = 0
    hits: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class _Chain:
    """A sequence's place in the prefix cache: the keys of its computed full blocks and the serial
    its next block chains to (None once a collision broke the chain: later blocks stay uncached)."""
    keys: list[bytes] = field(default_factory=list)
    serial: int | None = ROOT_SERIAL


class BlockManager:
    """Block tables of all sequences over one pool: allocate, append, fork, free, prefix hits.

    定义于 第6章 §6.3.2
    """
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_cache = PrefixCache(self.allocator)
        self.stats = PrefixCacheStats()
        self._tables: dict[object, list[int]] = {}
        self._num_tokens: dict[object, int] = {}
        self._chains: dict[object, _Chain] = {}

    def reset_stats(self) -> None:
        self.stats = PrefixCacheStats()

    # ---- capacity -------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Free plus evictable (cached, unused) blocks: what a new request can draw on."""
        return self.allocator.num_free + self.prefix_cache.num_evictable

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        return -(-num_tokens // self.block_size)

    def _new_block(self) -> int:
        if self.allocator.num_free == 0 and self.prefix_cache.num_evictable:
            self.prefix_cache.evict_one()
        return self.allocator.allocate()

    def _cache_hits(self, token_ids: Sequence[int]) -> tuple[list[bytes], list[int]]:
        """(keys, blocks) of the cached full-block prefix, leaving at least one token to compute."""
        if not self.enable_prefix_caching or len(token_ids) == 0:
            return [], []
        bs = self.block_size
        usable = (len(token_ids) - 1) // bs
        keys = chain_hashes(token_ids[:usable * bs], bs)
        blocks = self.prefix_cache.lookup(keys, [token_ids[i * bs:(i + 1) * bs] for i in range(usable)])
        return keys[:len(blocks)], blocks

    def num_cached_tokens(self, token_ids: Sequence[int]) -> int:
        """Prompt tokens the prefix cache would serve right now (always fewer than the prompt)."""
        return len(self._cache_hits(token_ids)[1]) * self.block_size

    # ---- sequences ------------------------------------------------------------------------
    def can_allocate(self, token_ids: Sequence[int]) -> bool:
        _, hit = self._cache_hits(token_ids)
        reusing_evictable = sum(self.prefix_cache.is_evictable(b) for b in hit)
        new = self.blocks_needed(len(token_ids)) - len(hit)
        return new <= self.num_free_blocks - reusing_evictable

    def allocate(self, seq_id: object, token_ids: Sequence[int]) -> int:
        """Build the block table of a new prompt; returns how many tokens are already cached."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        if len(token_ids) == 0:
            raise ValueError("cannot allocate an empty prompt")
        if not self.can_allocate(token_ids):
            raise NoFreeBlocksError(f"{self.blocks_needed(len(token_ids))} blocks needed, "
                                    f"{self.num_free_blocks} free")
        keys, hit = self._cache_hits(token_ids)
        for block in hit:
            self.prefix_cache.acquire(block)
        table = list(hit)
        table += [self._new_block() for _ in range(self.blocks_needed(len(token_ids)) - len(hit))]
        self._tables[seq_id], self._num_tokens[seq_id] = table, len(token_ids)
        self._chains[seq_id] = _Chain(keys, self.prefix_cache.serial(hit[-1]) if hit else ROOT_SERIAL)
        num_cached = len(hit) * self.block_size
        if self.enable_prefix_caching:
            self.stats.requests += 1
            self.stats.queries += len(token_ids)
            self.stats.hits += num_cached
        return num_cached

    def _needs_cow(self, seq_id: object, num_tokens_after: int) -> bool:
        n = self._num_tokens[seq_id]
        if n % self.block_size == 0 or num_tokens_after <= n:
            return False
        return self._users(self._tables[seq_id][-1]) > 1

    def _users(self, block: int) -> int:
        """Sequences using a block: its ref count minus the prefix cache's own reference."""
        return self.allocator.ref_count(block) - (1 if self.prefix_cache.is_cached(block) else 0)

    def can_append(self, seq_id: object, num_new_tokens: int = 1) -> bool:
        after = self._num_tokens[self._known(seq_id)] + num_new_tokens
        need = self.blocks_needed(after) - len(self._tables[seq_id]) + self._needs_cow(seq_id, after)
        return need <= self.num_free_blocks

    def append_slots(self, seq_id: object, num_tokens_after: int) -> list[tuple[int, int]]:
        """Grow the table to hold `num_tokens_after` tokens. Returns the (src, dst) block copies
        (copy-on-write of a shared last partial block) the caller must apply to the KV store."""
        table = self._tables[self._known(seq_id)]
        if num_tokens_after < self._num_tokens[seq_id]:
            raise ValueError(f"sequence {seq_id!r} has {self._num_tokens[seq_id]} tokens; cannot shrink "
                             f"to {num_tokens_after}")
        if not self.can_append(seq_id, num_tokens_after - self._num_tokens[seq_id]):
            raise NoFreeBlocksError(f"not enough free blocks to grow {seq_id!r} to {num_tokens_after} tokens")
        copies = append_slots(self.allocator, table, self._num_tokens[seq_id], num_tokens_after, self.block_size,
                              users=self._users, allocate=self._new_block, release=self.prefix_cache.release)
        self._num_tokens[seq_id] = num_tokens_after
        return copies

    def mark_computed(self, seq_id: object, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Register the sequence's newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        table, chain = self._tables[self._known(seq_id)], self._chains[seq_id]
        if num_computed_tokens > min(len(token_ids), self._num_tokens[seq_id]):
            raise ValueError(f"{num_computed_tokens} computed tokens but the sequence holds "
                             f"{min(len(token_ids), self._num_tokens[seq_id])}")
        bs = self.block_size
        for i in range(len(chain.keys), num_computed_tokens // bs):
            if chain.serial is None:
                return
            tokens = token_ids[i * bs:(i + 1) * bs]
            chain.keys.append(hash_block(chain.keys[-1] if chain.keys else ROOT_HASH, tokens))
            chain.serial = self.prefix_cache.register(chain.keys[-1], table[i], tokens, chain.serial)

    def fork(self, parent_id: object, child_id: object) -> None:
        """The child shares every block of the parent (n>1 sampling, beam search)."""
        if child_id in self._tables:
            raise ValueError(f"sequence {child_id!r} already exists")
        self._tables[child_id] = fork_table(self.allocator, self._tables[self._known(parent_id)])
        self._num_tokens[child_id] = self._num_tokens[parent_id]
        parent = self._chains[parent_id]
        self._chains[child_id] = _Chain(list(parent.keys), parent.serial)

    def free(self, seq_id: object) -> None:
        """Release a finished sequence; cached blocks become evictable, tail blocks first."""
        table = self._tables.pop(self._known(seq_id))
        del self._num_tokens[seq_id], self._chains[seq_id]
        for block in reversed(table):
            self.prefix_cache.release(block)

    # ---- views ----------------------------------------------------------------------------
    def _known(self, seq_id: object) -> object:
        if seq_id not in self._tables:
            raise KeyError(f"unknown sequence {seq_id!r}")
        return seq_id

    def has_seq(self, seq_id: object) -> bool:
        return seq_id in self._tables

    def num_tokens(self, seq_id: object) -> int:
        return self._num_tokens[self._known(seq_id)]

    def block_table(self, seq_id: object) -> list[int]:
        return list(self._tables[self._known(seq_id)])

    def slot_mapping(self, seq_id: object, start: int, end: int) -> list[int]:
        """Physical slots (block * block_size + offset) of positions start..end-1."""
        table = self._tables[self._known(seq_id)]
        if not 0 <= start <= end <= len(table) * self.block_size:
            raise ValueError(f"positions {start}..{end} outside the {len(table)} blocks of {seq_id!r}")
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]
