"""A contiguous KV cache that stores K and V in INT8 with one scale per token and head.

Keys and values are quantized when they are written (symmetric, scale = max|x| / 127 over the
head dimension of each token), and dequantized to the query's dtype when attention reads them.
Per-token scales follow the dynamic range of each new token (no calibration), and an outlier
token cannot hurt the others. Memory per token: L·H_kv·(D + 2) bytes for K and for V (an fp16
scale per head) instead of L·H_kv·D·2 bytes in bf16: 0.52× for head_dim 64.

It implements the model's cache interface (`seq_len`, `attend`, `advance`), like
`common.model.kv_cache.KVCache`. The paged engine's INT8 store (same quantizer) is `common.quant.kv_int8_paged`.
"""
from __future__ import annotations

import torch

from ..model.attention import causal_mask, sdpa
from ..model.kv_cache import KVCache
from ..model.kv_math import kv_bytes_per_token
from ..model.llama import ContextLengthError, LlamaConfig


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> int8 codes [..., D] and fp16 scales [...] (symmetric, per token and head).

    定义于 第8章 §8.5
    """
    # clamp after the fp16 cast (to its smallest subnormal): an all-zero token must not get scale 0 (0/0 = NaN)
    scale = (x.abs().amax(-1).float() / 127).to(torch.float16).clamp_min(2 ** -24)
    codes = torch.clamp(torch.round(x.float() / scale.float()[..., None]), -127, 127).to(torch.int8)
    return codes, scale


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """INT8 KV codes back to `dtype`, one scale per token and head.

    定义于 第8章 §8.5
    """
    return (codes.float() * scale.float()[..., None]).to(dtype)


class Int8KVCache(KVCache):
    """`KVCache` whose K/V buffers hold int8 codes, with fp16 scales [layers, batch, kv_heads, max_len].

    定义于 第8章 §8.5
    """

    def __init__(self, config: LlamaConfig, batch_size: int, max_seq_len: int,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be >= 1, got {batch_size}, {max_seq_len}")
        super().__init__(config, batch_size, max_seq_len, torch.int8, device)
        self.k_scale = torch.zeros(self.k.shape[:-1], dtype=torch.float16, device=device)
        self.v_scale = torch.zeros(self.v.shape[:-1], dtype=torch.float16, device=device)

    @staticmethod
    def bytes_per_token(config: LlamaConfig) -> int:
        """K and V codes (1 byte per value) plus their scales (one fp16 per token and head), all layers, one token."""
        layers, heads = config.num_hidden_layers, config.num_key_value_heads
        return kv_bytes_per_token(layers, heads, config.head_dim, 1) + kv_bytes_per_token(layers, heads, 1, 2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.k_scale.nbytes + self.v_scale.nbytes

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        span = slice(self.seq_len, self.seq_len + q.shape[-2])
        if span.stop > self.max_seq_len:
            raise ContextLengthError(f"KV cache holds {self.max_seq_len} tokens; {span.stop} requested")
        for codes, scales, new in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            codes[layer_idx, :, :, span], scales[layer_idx, :, :, span] = quantize_kv(new)
        read = [dequantize_kv(codes[layer_idx, :, :, : span.stop], scales[layer_idx, :, :, : span.stop], q.dtype)
                for codes, scales in ((self.k, self.k_scale), (self.v, self.v_scale))]
        causal = None if q.shape[-2] == 1 else causal_mask(q.shape[-2], span.stop, device=q.device)
        return sdpa(q, read[0], read[1], mask=causal)
