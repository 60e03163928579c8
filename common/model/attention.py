"""Attention from scratch and the masks the book draws.

Convention everywhere: a boolean mask of shape [queries, keys] where True means
"this query may attend to this key" (the same meaning as SDPA's boolean `attn_mask`).
Rows are queries, columns are keys: a causal mask is lower-triangular.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def causal_mask(num_queries: int, num_keys: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Query i (at absolute position num_keys - num_queries + i) sees keys 0..that position.

    With num_keys > num_queries this is the mask of a chunk or a decode step over a cache.

    定义于 第5章 §5.3
    """
    num_keys = num_queries if num_keys is None else num_keys
    offset = num_keys - num_queries
    q = torch.arange(num_queries, device=device)[:, None]
    k = torch.arange(num_keys, device=device)[None, :]
    return k <= q + offset


def padding_mask(lengths: list[int], max_len: int | None = None, left: bool = False,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """[batch, max_len] True on real tokens, False on padding (right padding unless `left`).

    定义于 第5章 §5.3
    """
    max_len = max(lengths) if max_len is None else max_len
    pos = torch.arange(max_len, device=device)[None, :]
    n = torch.tensor(lengths, device=device)[:, None]
    return pos >= max_len - n if left else pos < n


def block_diagonal_causal_mask(lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Several sequences packed into one row (ragged batching): causal inside each, nothing across.

    定义于 第5章 §5.3
    """
    seq_id = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                     torch.tensor(lengths, device=device))
    same = seq_id[:, None] == seq_id[None, :]
    return same & causal_mask(len(seq_id), device=device)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v, written out. Supports GQA: k/v may have fewer heads than q.

    q: [..., Hq, Sq, D]; k, v: [..., Hkv, Sk, D]; mask: bool broadcastable to [..., Hq, Sq, Sk].

    定义于 第5章 §5.3
    """
    groups = q.shape[-3] // k.shape[-3]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=-3)
        v = v.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
         causal: bool = False) -> torch.Tensor:
    """PyTorch's fused attention with GQA; the fast path the model uses.

    定义于 第5章 §5.3
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                          enable_gqa=q.shape[-3] != k.shape[-3])
