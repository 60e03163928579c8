"""Lab 6: a paged KV cache from the inside — block pool, block tables, fork with copy-on-write,
prefix hash chain, radix tree, and PagedAttention with an online softmax.

Fill in every function/method (remove the `raise NotImplementedError`), then run `make lab-6`.
Conventions (the same as common/paged):
- A block holds `block_size` tokens; token t of a sequence lives in block table[t // block_size].
- Caches are [num_blocks, block_size, kv_heads, head_dim]; q is [batch, q_heads, head_dim].
"""
from __future__ import annotations

from array import array  # noqa: F401  (for chain_hashes)
from typing import Sequence

import torch


class NoFreeBlocksError(RuntimeError):
    """Raised by BlockAllocator.allocate when every block is in use."""


class BlockAllocator:
    """Blocks 0..num_blocks-1 with a free list and one reference count per block."""

    def __init__(self, num_blocks: int) -> None:
        """Raise ValueError if num_blocks <= 0. Every block starts free with ref count 0."""
        # TODO: store num_blocks, a free list (e.g. collections.deque(range(num_blocks))) and a list of counts
        raise NotImplementedError("BlockAllocator.__init__")

    @property
    def num_free(self) -> int:
        """How many blocks are on the free list."""
        raise NotImplementedError("BlockAllocator.num_free")

    def allocate(self) -> int:
        """Take a free block, set its ref count to 1 and return it; NoFreeBlocksError when none is free."""
        raise NotImplementedError("BlockAllocator.allocate")

    def incref(self, block: int) -> None:
        """One more user of an allocated block. ValueError if the block is free or out of range."""
        raise NotImplementedError("BlockAllocator.incref")

    def decref(self, block: int) -> int:
        """One user fewer; at 0 the block goes back on the free list. Returns the new count.
        ValueError on a block that is already free (double free) or out of range."""
        raise NotImplementedError("BlockAllocator.decref")

    def ref_count(self, block: int) -> int:
        raise NotImplementedError("BlockAllocator.ref_count")


def fork_table(pool: BlockAllocator, table: list[int]) -> list[int]:
    """A child sequence shares every block of its parent: incref each block, return a copy of the table."""
    # TODO: one incref per block; return a NEW list (the parent's table must not be aliased)
    raise NotImplementedError("fork_table")


def append_slots(pool: BlockAllocator, table: list[int], num_tokens: int, num_tokens_after: int,
                 block_size: int) -> list[tuple[int, int]]:
    """Grow `table` IN PLACE so it holds num_tokens_after tokens (it holds num_tokens now).

    Copy-on-write: if the last block is only partly filled (num_tokens % block_size != 0), new
    tokens will be written into it, and it is shared (ref count > 1), then allocate a new block,
    decref the old one, put the new one in its place, and record (old, new). Full blocks are never
    copied. Then append freshly allocated blocks until len(table) * block_size >= num_tokens_after.
    Returns the list of (src, dst) copies (empty or one pair). ValueError if num_tokens_after < num_tokens.
    """
    # TODO: COW check first, then allocate the missing blocks
    raise NotImplementedError("append_slots")


def chain_hashes(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Chained sha256 keys of the FULL blocks of token_ids (a trailing partial block gets none), vLLM's scheme.

    key_0 = sha256(b"" + bytes_0), key_i = sha256(key_{i-1} + bytes_i), where bytes_i is block i's token ids
    as int64 in native byte order: `array("q", block).tobytes()`; each key is the 32-byte `.digest()`.
    Equal keys then mean equal whole prefixes, not just equal blocks. sha256, not Python's 64-bit `hash`:
    a crafted collision would hand one request another's KV. ValueError if block_size <= 0.
    """
    # TODO: walk the full blocks, carrying the parent key (start with b"")
    raise NotImplementedError("chain_hashes")


class RadixCache:
    """A radix tree over token sequences (page size 1), SGLang-style.

    Nodes have: key (list of tokens on the edge from the parent), value (the KV slot ids of those
    tokens: here the inserted `value` list, default the tokens themselves), children (dict keyed by
    the first token of the child's key), parent, lock_ref (int), a last-access time and a hit count.

    eviction_policy "lru": evict the least recently used leaf first (every match_prefix and insert
    refreshes the access time of each node on its path). "lfu" (SGLang's --radix-eviction-policy lfu):
    evict the leaf with the smallest (hit_count, last access) first, where hit_count counts the inserts
    that went through the node (insert adds 1 to every node on the path, the new leaf included; a
    split's upper node copies the hit count of the node it was cut from).
    """

    def __init__(self, eviction_policy: str = "lru") -> None:
        """ValueError unless eviction_policy is "lru" or "lfu"."""
        # TODO: a root node with an empty key; a logical clock for access times; the policy
        raise NotImplementedError("RadixCache.__init__")

    def match_prefix(self, tokens: Sequence[int]) -> tuple[list[int], object]:
        """(values of the longest cached prefix of tokens, the node where it ends).

        If the match ends inside an edge, SPLIT that edge so the returned node ends exactly at the
        match. Refresh the access time of every node on the path."""
        raise NotImplementedError("RadixCache.match_prefix")

    def insert(self, tokens: Sequence[int], value: Sequence[int] | None = None) -> int:
        """Insert tokens (values default to the tokens); returns how many leading tokens were
        already in the tree. Split edges on partial matches; add one new leaf for the rest."""
        raise NotImplementedError("RadixCache.insert")

    def inc_lock_ref(self, node: object) -> None:
        """+1 lock on every node from `node` up to (not including) the root: locked nodes are never evicted."""
        raise NotImplementedError("RadixCache.inc_lock_ref")

    def dec_lock_ref(self, node: object) -> None:
        raise NotImplementedError("RadixCache.dec_lock_ref")

    def evict(self, num_tokens: int) -> int:
        """Delete unlocked LEAVES in the policy's order (see the class docstring) until at least
        num_tokens tokens are gone (a parent left childless and unlocked becomes a candidate).
        Returns tokens evicted."""
        raise NotImplementedError("RadixCache.evict")

    def total_size(self) -> int:
        """Tokens stored in the tree (sum of edge lengths)."""
        raise NotImplementedError("RadixCache.total_size")


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Decode attention over block tables with an ONLINE softmax (no per-block normalization!).

    q [B, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks]
    (long, padding entries unused); seq_lens [B]. Query head h uses KV head h // (Hq // Hkv).
    For each request walk its blocks; keep per head a running max m, running sum l and output acc;
    for a block with scores s (scaled by 1/sqrt(D), only the first seq_len positions count):
    m_new = max(m, max s); l = l*exp(m - m_new) + sum exp(s - m_new);
    acc = acc*exp(m - m_new) + sum exp(s - m_new) v; finally out = acc / l. Returns [B, Hq, D].
    """
    # TODO: loops over requests and blocks are fine; compute in float32, return q.dtype
    raise NotImplementedError("paged_attention_reference")
