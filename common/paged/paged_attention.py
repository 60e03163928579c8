"""Decode attention over a block table (PagedAttention), two ways, both checked against SDPA.

`paged_attention_reference` walks the blocks with an ONLINE softmax: a running max m, running
sum l and output acc; when a block raises the max, the old l and acc are rescaled by
exp(m_old - m_new). (The book normalizes each block on its own and concatenates the results,
which is not softmax over the whole sequence: `per_block_softmax_wrong` reproduces it.)
`paged_attention` gathers the blocks into a padded tensor and calls SDPA: the fast torch path.
Shapes: q [B, Hq, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D];
block_tables [B, max_blocks] (long; padding entries may be anything >= -1); seq_lens [B].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_paged_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       block_tables: torch.Tensor, seq_lens: torch.Tensor) -> None:
    """Raise ValueError on shapes that would otherwise give a wrong answer silently.

    定义于 第6章 §6.3.2
    """
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"q must be [B,Hq,D] and caches [blocks,block_size,Hkv,D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, Hq, D = q.shape
    if k_cache.shape[3] != D or Hq % k_cache.shape[2]:
        raise ValueError(f"head_dim {D} vs {k_cache.shape[3]}, or {Hq} query heads not a multiple of "
                         f"{k_cache.shape[2]} KV heads")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or seq_lens.shape != (B,):
        raise ValueError(f"block_tables must be [B,max_blocks] and seq_lens [B] for B={B}")
    if (seq_lens <= 0).any() or (seq_lens > block_tables.shape[1] * k_cache.shape[1]).any():
        raise ValueError("every seq_len must be in 1..max_blocks*block_size")


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Block-by-block online softmax in fp32 (readable, slow: Python loops over requests and blocks).

    定义于 第6章 §6.3.2
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    B, Hq, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    group, scale = Hq // Hkv, 1.0 / math.sqrt(D)
    out = torch.empty_like(q)
    for b in range(B):
        n = int(seq_lens[b])
        qb = q[b].float() * scale                                   # [Hq, D]
        m = torch.full((Hq,), float("-inf"), device=q.device)
        l = torch.zeros(Hq, device=q.device)
        acc = torch.zeros(Hq, D, device=q.device)
        for i in range(-(-n // bs)):
            valid = min(bs, n - i * bs)
            block = int(block_tables[b, i])
            k = k_cache[block, :valid].float().repeat_interleave(group, dim=1)  # [valid, Hq, D]
            v = v_cache[block, :valid].float().repeat_interleave(group, dim=1)
            s = torch.einsum("hd,thd->ht", qb, k)                   # [Hq, valid]
            m_new = torch.maximum(m, s.max(dim=1).values)
            alpha = torch.exp(m - m_new)                            # rescale what we had
            p = torch.exp(s - m_new[:, None])
            l = l * alpha + p.sum(dim=1)
            acc = acc * alpha[:, None] + torch.einsum("ht,thd->hd", p, v)
            m = m_new
        out[b] = (acc / l[:, None]).to(q.dtype)
    return out


def per_block_softmax_wrong(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """The book's version: softmax inside each block, outputs of the blocks simply summed.

    Each block's weights sum to 1, so the result is sum over blocks of a per-block average,
    not softmax over all keys. Kept to show the error; never use it.

    定义于 第6章 §6.3.2
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    B, Hq, D = q.shape
    bs, group = k_cache.shape[1], Hq // k_cache.shape[2]
    out = torch.zeros_like(q, dtype=torch.float32)
    for b in range(B):
        n = int(seq_lens[b])
        for i in range(-(-n // bs)):
            valid, block = min(bs, n - i * bs), int(block_tables[b, i])
            k = k_cache[block, :valid].float().repeat_interleave(group, dim=1)
            v = v_cache[block, :valid].float().repeat_interleave(group, dim=1)
            w = torch.softmax(torch.einsum("hd,thd->ht", q[b].float(), k) / math.sqrt(D), dim=1)
            out[b] += torch.einsum("ht,thd->hd", w, v)
    return out.to(q.dtype)


def gather_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of every request laid end to end: k, v [B, Hkv, max_blocks*block_size, D].

    定义于 第6章 §6.3.2
    """
    idx = block_tables.clamp(min=0).to(device=k_cache.device, dtype=torch.long)
    B, nb = idx.shape
    _, bs, Hkv, D = k_cache.shape
    k = k_cache[idx].reshape(B, nb * bs, Hkv, D).transpose(1, 2)
    v = v_cache[idx].reshape(B, nb * bs, Hkv, D).transpose(1, 2)
    return k, v


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Gather the blocks then one batched SDPA with a length mask: no per-request Python loop.

    定义于 第6章 §6.3.2
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    k, v = gather_kv(k_cache, v_cache, block_tables)
    mask = torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens.to(q.device)[:, None]
    out = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=mask[:, None, None, :],
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out[:, :, 0, :]
