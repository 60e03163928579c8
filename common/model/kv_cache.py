"""A contiguous KV cache: one [layers, batch, kv_heads, max_len, head_dim] buffer for K and V.

Every sequence in the batch shares one length (the simple layout of chapter 5, with the
max-length pre-allocation whose waste chapter 6 measures). The paged cache lives in
`common.paged` and plugs into the same model through the same `attend` interface.
"""
from __future__ import annotations

import torch

from .attention import causal_mask, sdpa
from .llama import ContextLengthError, LlamaConfig


class KVCache:
    """Contiguous per-layer K/V buffers for a batch, preallocated to max_seq_len.

    定义于 第5章 §5.4
    """
    def __init__(self, config: LlamaConfig, batch_size: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_seq_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq_len = max_seq_len
        self.seq_len = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated (not bytes used: the gap is chapter 6's fragmentation)."""
        return self.k.nbytes + self.v.nbytes

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, new = self.seq_len, q.shape[-2]
        end = start + new
        if end > self.max_seq_len:
            raise ContextLengthError(f"KV cache holds {self.max_seq_len} tokens; {end} requested")
        self.k[layer_idx, :, :, start:end] = k
        self.v[layer_idx, :, :, start:end] = v
        keys, values = self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]
        mask = None if new == 1 else causal_mask(new, end, device=q.device)
        return sdpa(q, keys, values, mask=mask)

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens

    def reset(self) -> None:
        self.seq_len = 0
