"""Which paged KV store holds the engine's K/V: one table keyed by `kv_cache_dtype` (vLLM's name).

Every store in the table implements `common.paged.kv_store.KVStore` with the same layout (head-major)
and the same constructor `(config, num_blocks, block_size, dtype, device)`, where `dtype` is the model
dtype attention reads; the runner and `LLM` never ask which one they hold.
"""
from __future__ import annotations

from ..paged.kv_store import HeadMajorKVStore, KVStore
from ..quant.kv_int8_paged import Int8HeadMajorKVStore

KV_STORES: dict[str, type[KVStore]] = {
    "auto": HeadMajorKVStore,         # K/V in the model dtype
    "int8": Int8HeadMajorKVStore,     # int8 codes + one fp16 scale per (token, kv head)
}


def kv_store_class(kv_cache_dtype: str) -> type[KVStore]:
    """The store class for `kv_cache_dtype`; an unknown key is a ValueError listing the valid ones.

    定义于 第7章 §7.6
    """
    if not isinstance(kv_cache_dtype, str) or kv_cache_dtype not in KV_STORES:
        raise ValueError(f"kv_cache_dtype must be one of {tuple(KV_STORES)}, got {kv_cache_dtype!r}")
    return KV_STORES[kv_cache_dtype]

