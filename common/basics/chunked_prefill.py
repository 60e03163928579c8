"""Chunked prefill (book 5.6): feed a long prompt through the model m tokens at a time.

Each chunk's queries attend to every key already in the cache plus a causal prefix of their own
chunk: the mask is [chunk, cached + chunk], all True over the cached columns. Because the cache
holds exactly the K/V a full prefill would have computed, the logits are the same (up to
float rounding); what changes is the size of the activations and how long one forward takes.
"""
from __future__ import annotations

import torch

from ..model.attention import causal_mask, sdpa
from ..model.kv_cache import KVCache
from ..model.llama import Llama


def chunk_mask(cached_len: int, chunk_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[chunk_len, cached_len + chunk_len] bool: see the whole cache, causal inside the chunk.

    定义于 第5章 §5.7
    """
    if cached_len < 0 or chunk_len < 1:
        raise ValueError(f"need cached_len >= 0 and chunk_len >= 1, got {cached_len}, {chunk_len}")
    return causal_mask(chunk_len, cached_len + chunk_len, device=device)


def attend_chunk(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk (or one decode step, chunk = 1) of attention over a cache.

    q: [B, Hq, C, D]; k_new, v_new: [B, Hkv, C, D]; k_cache, v_cache: [B, Hkv, S, D] (S may be 0).
    Returns (output [B, Hq, C, D], k_cache + k_new, v_cache + v_new).

    定义于 第5章 §5.7
    """
    if k_new.shape != v_new.shape or k_cache.shape != v_cache.shape:
        raise ValueError(f"K and V shapes differ: {tuple(k_new.shape)} vs {tuple(v_new.shape)}, "
                         f"{tuple(k_cache.shape)} vs {tuple(v_cache.shape)}")
    if q.shape[-2] != k_new.shape[-2] or k_cache.shape[:2] != k_new.shape[:2] or k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k_new {tuple(k_new.shape)}, "
                         f"k_cache {tuple(k_cache.shape)}")
    keys = torch.cat([k_cache, k_new], dim=-2)
    values = torch.cat([v_cache, v_new], dim=-2)
    mask = chunk_mask(k_cache.shape[-2], q.shape[-2], device=q.device)
    return sdpa(q, keys, values, mask=mask), keys, values


def chunk_bounds(num_tokens: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(start, end)] of ⌈num_tokens / chunk_size⌉ chunks.

    定义于 第5章 §5.7
    """
    if num_tokens < 1 or chunk_size < 1:
        raise ValueError(f"need num_tokens >= 1 and chunk_size >= 1, got {num_tokens}, {chunk_size}")
    return [(s, min(s + chunk_size, num_tokens)) for s in range(0, num_tokens, chunk_size)]


@torch.inference_mode()
def chunked_prefill(model: Llama, input_ids: torch.Tensor, chunk_size: int, cache: KVCache,
                    last_only: bool = True) -> torch.Tensor:
    """Prefill [1, n] ids into `cache` in chunks; logits of the last token ([1, 1, V]) or of all.

    定义于 第5章 §5.7
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    outputs = []
    for start, end in chunk_bounds(input_ids.shape[1], chunk_size):
        logits = model(input_ids[:, start:end], cache=cache, last_only=last_only)
        outputs.append(logits)
    return outputs[-1] if last_only else torch.cat(outputs, dim=1)
