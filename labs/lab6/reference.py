"""Lab 6 reference solutions: the same names as exercises.py, bound to the library in common/paged."""
from common.paged.block_allocator import BlockAllocator as BlockPool
from common.paged.block_allocator import NoFreeBlocksError
from common.paged.block_ops import append_slots as _append_slots
from common.paged.block_ops import fork_table
from common.paged.paged_attention import paged_attention_reference as paged_attention
from common.paged.prefix_cache import chain_hashes as prefix_block_hashes
from common.paged.radix_cache import RadixCache as RadixTree

__all__ = ["NoFreeBlocksError", "BlockPool", "fork_table", "append_slots", "prefix_block_hashes", "RadixTree",
           "paged_attention"]


def append_slots(pool, table, num_tokens, num_tokens_after, block_size):
    return _append_slots(pool, table, num_tokens, num_tokens_after, block_size)
