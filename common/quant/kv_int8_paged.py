"""The paged KV store in INT8: int8 codes in the block layout plus one scale per (token slot, kv head).

Same layout as `common.paged.PagedKVStore` (codes [num_blocks, block_size, kv_heads, head_dim] per
layer), plus fp16 scales [num_blocks, block_size, kv_heads]. A token is quantized when it is written
through its slot (symmetric, per token and head: `common.quant.kv_int8.quantize_kv`), so a block's
scales travel with its codes (copy_blocks copies both) and no calibration is needed; attention
gathers a request's blocks and dequantizes them to the query dtype. This is vLLM's
`kv_cache_dtype="int8"` idea with per-token scales instead of one per-tensor scale.
Bytes per token: 2·L·H_kv·(D + 2) instead of 2·L·H_kv·D·2 in bf16 (0.516× for head_dim 64).
"""
from __future__ import annotations

import torch

from ..llama import LlamaConfig
from ..paged.kv_store import PagedKVStore
from .kv_int8 import Int8KVCache, dequantize_kv, quantize_kv


class Int8PagedKVStore(PagedKVStore):
    """`PagedKVStore` whose k_cache/v_cache hold int8 codes; k_scale/v_scale hold the fp16 scales.

    定义于 第8章 §8.5
    """

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(config, num_blocks, block_size, torch.int8, device)
        shape = (num_blocks, block_size, config.num_key_value_heads)
        self.k_scale = [torch.zeros(shape, dtype=torch.float16, device=device) for _ in self.k_cache]
        self.v_scale = [torch.zeros(shape, dtype=torch.float16, device=device) for _ in self.v_cache]

    def buffers(self) -> list[torch.Tensor]:
        return [*super().buffers(), *self.k_scale, *self.v_scale]

    @staticmethod
    def bytes_per_token(config: LlamaConfig) -> int:
        """K and V codes plus their fp16 scales, all layers, one token (same as the contiguous cache)."""
        return Int8KVCache.bytes_per_token(config)

    @staticmethod
    def num_blocks_for_memory(config: LlamaConfig, num_bytes: int, block_size: int,
                              dtype: torch.dtype = torch.int8) -> int:
        """How many INT8 blocks (codes + scales) fit in `num_bytes`; `dtype` is ignored."""
        return int(num_bytes // (Int8PagedKVStore.bytes_per_token(config) * block_size))

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize k/v [tokens, kv_heads, head_dim] per token and head, store codes and scales at the slots."""
        slots = self.check_write(layer, slot_mapping, k, v)
        for codes, scales, x in ((self.k_cache[layer], self.k_scale[layer], k),
                                 (self.v_cache[layer], self.v_scale[layer], v)):
            q, s = quantize_kv(x)
            codes.view(-1, *codes.shape[2:]).index_copy_(0, slots, q)
            scales.view(-1, scales.shape[-1]).index_copy_(0, slots, s)

    def gather(self, layer: int, blocks: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K and V of the given blocks, [*blocks.shape, block_size, kv_heads, head_dim]."""
        return (dequantize_kv(self.k_cache[layer][blocks], self.k_scale[layer][blocks], dtype),
                dequantize_kv(self.v_cache[layer][blocks], self.v_scale[layer][blocks], dtype))
