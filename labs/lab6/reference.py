"""Lab 6 reference solutions: the library in common/paged, under the same names as exercises.py."""
from common.paged.block_allocator import BlockAllocator, NoFreeBlocksError
from common.paged.block_hash import chain_hashes
from common.paged.block_ops import append_slots, fork_table
from common.paged.paged_attention import paged_attention_reference
from common.paged.radix_cache import RadixCache

__all__ = ["NoFreeBlocksError", "BlockAllocator", "fork_table", "append_slots", "chain_hashes", "RadixCache",
           "paged_attention_reference"]
