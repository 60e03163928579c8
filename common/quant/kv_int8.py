"""A contiguous KV cache that stores K and V in INT8 with one scale per token and head.

Keys and values are quantized when they are written (symmetric, scale = max|x| / 127 over the
head dimension of each token), and dequantized to the query's dtype when attention reads them.
Per-token scales follow the dynamic range of each new token (no calibration), and an outlier
token cannot hurt the others. Memory per token: L·H_kv·(D + 2) bytes for K and for V (an fp16
scale per head) instead of L·H_kv·D·2 bytes in bf16: 0.52× for head_dim 64.

It implements the model's cache interface (`seq_len`, `attend`, `advance`), like
`common.kv_cache.KVCache`. (The paged engine's store is not part of this module.)
"""
from __future__ import annotations

import torch

from ..attention import causal_mask, sdpa
from ..llama import ContextLengthError, LlamaConfig


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> int8 codes [..., D] and fp16 scales [...] (symmetric, per token and head)."""
    scale = (x.abs().amax(-1).float() / 127).clamp_min(1e-8).to(torch.float16)
    codes = torch.clamp(torch.round(x.float() / scale.float()[..., None]), -127, 127).to(torch.int8)
    return codes, scale


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale.float()[..., None]).to(dtype)


class Int8KVCache:
    def __init__(self, config: LlamaConfig, batch_size: int, max_seq_len: int,
                 device: str | torch.device = "cpu") -> None:
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be >= 1, got {batch_size}, {max_seq_len}")
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_seq_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:-1], dtype=torch.float16, device=device)
        self.v_scale = torch.zeros(shape[:-1], dtype=torch.float16, device=device)
        self.max_seq_len = max_seq_len
        self.seq_len = 0

    @staticmethod
    def bytes_per_token(config: LlamaConfig) -> int:
        """K and V codes plus their fp16 scales, all layers, one token."""
        return 2 * config.num_hidden_layers * config.num_key_value_heads * (config.head_dim + 2)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.k_scale.nbytes + self.v_scale.nbytes

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, new = self.seq_len, q.shape[-2]
        end = start + new
        if end > self.max_seq_len:
            raise ContextLengthError(f"KV cache holds {self.max_seq_len} tokens; {end} requested")
        self.k[layer_idx, :, :, start:end], self.k_scale[layer_idx, :, :, start:end] = quantize_kv(k)
        self.v[layer_idx, :, :, start:end], self.v_scale[layer_idx, :, :, start:end] = quantize_kv(v)
        keys = dequantize_kv(self.k[layer_idx, :, :, :end], self.k_scale[layer_idx, :, :, :end], q.dtype)
        values = dequantize_kv(self.v[layer_idx, :, :, :end], self.v_scale[layer_idx, :, :, :end], q.dtype)
        mask = None if new == 1 else causal_mask(new, end, device=q.device)
        return sdpa(q, keys, values, mask=mask)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def reset(self) -> None:
        self.seq_len = 0
