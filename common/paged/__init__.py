"""Chapter 6: paged KV cache (blocks, block tables, PagedAttention), prefix caching, radix cache.

Importing this package never imports triton: the Triton kernel lives in
`common.paged.paged_attention_triton`.
"""
from .block_allocator import BlockAllocator, NoFreeBlocksError
from .block_manager import BlockManager, PrefixCacheStats
from .kv_store import HeadMajorKVStore, KVStore, PagedKVStore
from .paged_attention import gather_kv, paged_attention, paged_attention_reference, per_block_softmax_wrong
from .block_hash import chain_hashes, hash_block
from .prefix_cache import PrefixCache

__all__ = ["BlockAllocator", "NoFreeBlocksError", "BlockManager", "PrefixCacheStats", "PagedKVStore",
           "HeadMajorKVStore", "KVStore",
           "paged_attention", "paged_attention_reference", "per_block_softmax_wrong",
           "gather_kv", "PrefixCache", "hash_block", "chain_hashes"]
