"""SGLang's own RadixCache (simulated mode, no GPU pools) importable here, as the peer for chapter 6.

Why a shim: `sglang.srt.mem_cache.radix_cache` imports `sglang.srt.configs`, whose __init__ imports
every model config, and two of those modules import torchvision at import time
(`sglang.srt.multimodal.internvl_utils`, `sglang.srt.configs.deepseek_ocr`). torchvision must not be
installed beside torch 2.13 here (pip would replace torch). So, only when torchvision is missing,
those two modules are pre-registered in sys.modules as placeholders whose attributes are dummy
classes; nothing in the radix cache touches them. SGLang itself is installed with --no-deps and
needs `orjson` (requirements-common.txt).
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from array import array
from typing import Sequence

TORCHVISION_MODULES = ("sglang.srt.multimodal.internvl_utils", "sglang.srt.configs.deepseek_ocr")


def _placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = "placeholder installed by common.peers.sglang_radix (its real import needs torchvision)"

    def __getattr__(attr: str, _module: str = name) -> type:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__module__": _module, "model_type": f"placeholder_{attr}"})

    module.__getattr__ = __getattr__  # PEP 562: `from m import X` gets a dummy class
    return module


def sglang_radix_module() -> types.ModuleType:
    """`sglang.srt.mem_cache.radix_cache`, imported with the shim when torchvision is absent.

    定义于 第6章 §6.3.4
    """
    if importlib.util.find_spec("torchvision") is None:
        for name in TORCHVISION_MODULES:
            sys.modules.setdefault(name, _placeholder_module(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.srt.mem_cache import radix_cache
    return radix_cache


class _MockAllocator:
    """What RadixCache.evict calls to return evicted KV slots; we only count them."""
    device = "cpu"

    def __init__(self) -> None:
        self.freed = 0

    def free_segment(self, indices, start_pos: int = 0) -> None:
        self.freed += len(indices) - start_pos


class SGLangRadix:
    """SGLang's RadixCache.create_simulated(page_size) behind the same small API as
    common.paged.radix_cache.RadixCache: match_prefix → (values, node), insert → prefix length.

    定义于 第6章 §6.3.4
    """

    def __init__(self, page_size: int = 1, eviction_policy: str = "lru") -> None:
        rc = sglang_radix_module()
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        self._rc = rc
        self.allocator = _MockAllocator()
        # create_simulated() has no eviction-policy argument; build its params directly.
        params = CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=self.allocator,
                                 page_size=page_size, eviction_policy=eviction_policy)
        self.cache = rc.RadixCache(params)
        self.page_size = page_size

    def _key(self, tokens: Sequence[int]):
        return self._rc.RadixKey(token_ids=array("q", list(tokens)))

    def match_prefix(self, tokens: Sequence[int]) -> tuple[list[int], object]:
        result = self.cache.match_prefix(self._rc.MatchPrefixParams(key=self._key(tokens)))
        values = self.cache.path_device_indices(result.last_device_node)
        return values.tolist(), result.last_device_node

    def insert(self, tokens: Sequence[int], value: Sequence[int] | None = None) -> int:
        import torch
        params = self._rc.InsertParams(key=self._key(tokens),
                                       value=None if value is None else torch.tensor(list(value), dtype=torch.int64))
        return self.cache.insert(params).prefix_len

    def inc_lock_ref(self, node) -> None:
        self.cache.inc_lock_ref(node)

    def dec_lock_ref(self, node) -> None:
        self.cache.dec_lock_ref(node)

    def evict(self, num_tokens: int) -> int:
        return self.cache.evict(self._rc.EvictParams(num_tokens=num_tokens)).num_tokens_evicted

    @property
    def evictable_size(self) -> int:
        return self.cache.evictable_size()

    @property
    def protected_size(self) -> int:
        return self.cache.protected_size()

    def total_size(self) -> int:
        return self.cache.total_size()
