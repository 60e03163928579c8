"""The paged KV store in INT8: int8 codes in the engine's head-major block layout plus one scale per (token, kv head).

Same layout and constructor as `common.paged.HeadMajorKVStore` (codes [kv_heads, num_blocks,
block_size, head_dim] per layer), plus fp16 scales [kv_heads, num_blocks, block_size]. A token is
quantized when it is written through its slot (symmetric, per token and head:
`common.quant.kv_int8.quantize_kv`), so a block's scales travel with its codes (copy_blocks copies
both) and no calibration is needed; attention gathers a batch's pages with the same row indices as
the bf16 store and dequantizes them to the model dtype. This is vLLM's `kv_cache_dtype="int8"` idea
with per-token scales instead of one per-tensor scale.
Bytes per token: 2·L·H_kv·(D + 2) instead of 2·L·H_kv·D·2 in bf16 (0.516× for head_dim 64).
"""
from __future__ import annotations

import torch

from ..model.llama import LlamaConfig
from ..paged.kv_store import HeadMajorKVStore
from .kv_int8 import Int8KVCache, dequantize_kv, quantize_kv


class Int8HeadMajorKVStore(HeadMajorKVStore):
    """`HeadMajorKVStore` whose k_cache/v_cache hold int8 codes; k_scale/v_scale hold the fp16 scales.

    `dtype` is the model dtype that `gather_rows`/`gather` dequantize to (the codes are always int8).

    定义于 第8章 §8.5
    """

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype is what INT8 pages are dequantized to and must be a float dtype, got {dtype}")
        super().__init__(config, num_blocks, block_size, torch.int8, device)
        self.dtype = dtype
        shape = self.cache_shape(config, num_blocks, block_size)[:-1]
        self.k_scale = [torch.zeros(shape, dtype=torch.float16, device=device) for _ in self.k_cache]
        self.v_scale = [torch.zeros(shape, dtype=torch.float16, device=device) for _ in self.v_cache]
        self._codes_scratch = torch.empty(0, dtype=torch.int8, device=device)
        self._float_scratch = torch.empty(0, dtype=torch.float32, device=device)

    def buffers(self) -> list[torch.Tensor]:
        return [*super().buffers(), *self.k_scale, *self.v_scale]

    @classmethod
    def bytes_per_token(cls, config: LlamaConfig, dtype: torch.dtype | None = None) -> int:
        """K and V codes plus their fp16 scales, all layers, one token (as the contiguous cache);
        `dtype` (the dequantized dtype) takes no room."""
        return Int8KVCache.bytes_per_token(config)

    def write_rows(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize k/v [kv_heads, tokens, head_dim] per token and head; store codes and scales at `slot_rows`."""
        dim = self.config.head_dim
        for codes, scales, x in ((self.k_cache[layer], self.k_scale[layer], k),
                                 (self.v_cache[layer], self.v_scale[layer], v)):
            q, s = quantize_kv(x)
            codes.view(-1, dim).index_copy_(0, rows, q.reshape(-1, dim))
            scales.view(-1).index_copy_(0, rows, s.reshape(-1))

    def gather_rows(self, layer: int, rows: torch.Tensor,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K and V pages at `block_rows(blocks)`, [kv_heads, rows/heads * block_size, D] in `dtype`,
        equal to `dequantize_kv` (float32 product, one rounding to `dtype`). The int8 pages and the float32
        product go through two scratch buffers the store keeps: a fresh multi-MB tensor per layer costs
        more than the dequantization itself."""
        heads, dim, bs = self.config.num_key_value_heads, self.config.head_dim, self.block_size
        shape = (rows.numel(), bs, dim)
        if out is None:
            out = tuple(torch.empty(shape, dtype=self.dtype, device=rows.device) for _ in range(2))
        codes_buf, product = self._scratch(shape)
        for codes, scales, o in ((self.k_cache[layer], self.k_scale[layer], out[0]),
                                 (self.v_cache[layer], self.v_scale[layer], out[1])):
            torch.index_select(codes.view(-1, bs, dim), 0, rows, out=codes_buf)
            scale = scales.view(-1, bs).index_select(0, rows).float().unsqueeze(-1)
            if o.dtype == torch.float32:
                o.copy_(codes_buf).mul_(scale)
            else:
                product.copy_(codes_buf).mul_(scale)
                o.copy_(product)
        return out[0].view(heads, -1, dim), out[1].view(heads, -1, dim)

    def _scratch(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reusable int8 and float32 buffers of `shape` (grown to the largest gather seen)."""
        numel = shape[0] * shape[1] * shape[2]
        if self._codes_scratch.numel() < numel:
            device = self.k_cache[0].device
            self._codes_scratch = torch.empty(numel, dtype=torch.int8, device=device)
            self._float_scratch = torch.empty(numel, dtype=torch.float32, device=device)
        return self._codes_scratch[:numel].view(shape), self._float_scratch[:numel].view(shape)

    def gather(self, layer: int, blocks: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K and V of the given blocks, [*blocks.shape, block_size, kv_heads, head_dim]."""
        return tuple(dequantize_kv(codes[layer][:, blocks].movedim(0, -2), scales[layer][:, blocks].movedim(0, -1),
                                   dtype)
                     for codes, scales in ((self.k_cache, self.k_scale), (self.v_cache, self.v_scale)))
