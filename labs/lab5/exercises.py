"""Lab 5: attention, masks, a KV-cache decode step, the KV-bytes formula and one prefill chunk.

Fill in every function (remove the `raise NotImplementedError`), then run `make lab-5`.
Conventions (the same as common/model/attention.py): a mask is a bool tensor of shape
[queries, keys], True = "this query may attend to this key"; rows are queries, columns keys.
Tensors are laid out [batch, heads, seq, head_dim]. Use plain torch ops (no
F.scaled_dot_product_attention: the tests compare against it).
"""
from __future__ import annotations

import torch


def causal_mask(num_queries: int, num_keys: int | None = None) -> torch.Tensor:
    """[num_queries, num_keys] bool (num_keys defaults to num_queries).

    The queries are the LAST num_queries positions of the num_keys-long sequence: query i sits at
    position num_keys - num_queries + i and may see keys 0..that position (lower-triangular for a
    square mask; a decode step over a cache is one all-True row).
    """
    # TODO: compare torch.arange of keys with arange of queries shifted by num_keys - num_queries
    raise NotImplementedError("causal_mask")


def padding_mask(lengths: list[int], max_len: int | None = None, left: bool = False) -> torch.Tensor:
    """[len(lengths), max_len] bool: True on real tokens, False on padding.

    max_len defaults to max(lengths). Right padding puts real tokens first; left=True puts them last.
    """
    # TODO: one row per sequence; position p is real if p < n (right) or p >= max_len - n (left)
    raise NotImplementedError("padding_mask")


def ragged_mask(lengths: list[int]) -> torch.Tensor:
    """[T, T] bool for sequences of these lengths packed into one row (T = sum(lengths)):
    causal inside each sequence, False between different sequences (block-diagonal)."""
    # TODO: give every token its sequence id; allow (same id) AND (key position <= query position)
    raise NotImplementedError("ragged_mask")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_dim), masked) v.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Sk, D] with Hq a multiple of Hkv (GQA: query head h uses
    KV head h // (Hq // Hkv)); mask: bool broadcastable to [B, Hq, Sq, Sk] or None.
    Returns [B, Hq, Sq, D].
    """
    # TODO: repeat K/V heads for GQA, scores = q @ kᵀ * scale, masked_fill(~mask, -inf), softmax, @ v
    raise NotImplementedError("attention")


def decode_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step with a KV cache.

    q: [B, Hq, 1, D] (the new token's query); k_new, v_new: [B, Hkv, 1, D];
    k_cache, v_cache: [B, Hkv, S, D] (keys/values of the S earlier tokens).
    Return (output [B, Hq, 1, D], k_cache with k_new appended, v_cache with v_new appended).
    The new token may attend to every cached token and to itself.
    """
    # TODO: append along the sequence dim, then attention of q over all S + 1 keys
    raise NotImplementedError("decode_step")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """Bytes of KV cache one token needs: K and V, in every layer, for every KV head.

    With GQA/MQA pass the number of KV heads (not query heads). Raise ValueError if any argument
    is not a positive integer.
    """
    # TODO: 2 × layers × kv heads × head_dim × bytes, after validating the inputs
    raise NotImplementedError("kv_bytes_per_token")


def prefill_chunk(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of chunked prefill: C new tokens after S cached ones.

    q: [B, Hq, C, D]; k_new, v_new: [B, Hkv, C, D]; k_cache, v_cache: [B, Hkv, S, D] (S may be 0).
    Query i of the chunk may attend to all S cached keys and to chunk keys 0..i.
    Return (output [B, Hq, C, D], k_cache + k_new, v_cache + v_new), concatenated on the sequence dim.
    """
    # TODO: the mask is [C, S + C]: all True over the cache, causal over the chunk
    raise NotImplementedError("prefill_chunk")
