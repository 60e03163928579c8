"""FlashAttention's forward pass written as tile loops in torch, with a counter of "HBM" traffic.

Why: the speed of FlashAttention on a GPU comes from bytes, not FLOPs. Standard attention writes the
N×N scores S and probabilities P to HBM and reads them back (Θ(Nd + N²) elements); the tiled version
keeps a Q tile, a K/V tile and the running softmax statistics in SRAM (M elements) and never stores
S or P, but it re-reads all of K and V once per Q tile, so its traffic is Θ(N²d²/M) (Dao et al. 2022,
Theorem 2), not the O(Nd) some texts claim. The loops here do the real arithmetic (online softmax,
Q tiles outer, K/V tiles inner, as in FlashAttention-2) and count every tile they move.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class HBMCounter:
    """Bytes moved between "HBM" (the tensors passed in) and "SRAM" (the tiles being worked on).

    定义于 第11章 §11.6
    """
    read_bytes: int = 0
    write_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    def read(self, tile: torch.Tensor) -> torch.Tensor:
        self.read_bytes += tile.numel() * tile.element_size()
        return tile

    def write(self, tile: torch.Tensor) -> torch.Tensor:
        self.write_bytes += tile.numel() * tile.element_size()
        return tile


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty tensor [..., seq, head_dim]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share leading dims and head_dim")
    if block_m < 1 or block_n < 1:
        raise ValueError(f"block_m and block_n must be >= 1, got {block_m}, {block_n}")


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            block_m: int = 64, block_n: int = 64,
                            counter: HBMCounter | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) v by tiles: online softmax over K/V tiles of block_n keys, Q tiles of block_m rows outer.

    q: [..., Sq, D], k/v: [..., Sk, D] (same leading dims). causal=True follows SDPA's `is_causal`
    (query i sees keys 0..i) and skips K/V tiles that lie wholly above the diagonal. Statistics and the
    accumulator are fp32; the output has q's dtype. `counter` (optional) receives the tile traffic.

    定义于 第11章 §11.6
    """
    _check(q, k, v, block_m, block_n)
    counter = counter if counter is not None else HBMCounter()
    seq_q, seq_k, dim = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(dim)
    out = torch.empty_like(q)
    for m0 in range(0, seq_q, block_m):
        q_tile = counter.read(q[..., m0:m0 + block_m, :]).float()
        rows = q_tile.shape[-2]
        row_max = q_tile.new_full((*q_tile.shape[:-1], 1), float("-inf"))
        row_sum = q_tile.new_zeros((*q_tile.shape[:-1], 1))
        acc = q_tile.new_zeros(q_tile.shape)
        key_end = min(seq_k, m0 + rows) if causal else seq_k
        for n0 in range(0, key_end, block_n):
            k_tile = counter.read(k[..., n0:n0 + block_n, :]).float()
            v_tile = counter.read(v[..., n0:n0 + block_n, :]).float()
            scores = (q_tile @ k_tile.transpose(-1, -2)) * scale
            if causal and n0 + k_tile.shape[-2] > m0 + 1:       # the tile crosses the diagonal
                q_idx = torch.arange(m0, m0 + rows, device=q.device)[:, None]
                k_idx = torch.arange(n0, n0 + k_tile.shape[-2], device=q.device)[None, :]
                scores = scores.masked_fill(k_idx > q_idx, float("-inf"))
            new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
            probs = torch.exp(scores - new_max)
            correction = torch.exp(row_max - new_max)
            row_sum = row_sum * correction + probs.sum(-1, keepdim=True)
            acc = acc * correction + probs @ v_tile
            row_max = new_max
        out[..., m0:m0 + rows, :] = counter.write((acc / row_sum).to(q.dtype))
    return out


def standard_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               counter: HBMCounter | None = None) -> torch.Tensor:
    """Algorithm 0 of the FlashAttention paper: S = QKᵀ and P = softmax(S) go to HBM and come back.

    Counts read Q, K; write S; read S; write P; read P, V; write O = 4Nd + 4N² elements for Sq = Sk = N.

    定义于 第11章 §11.6
    """
    _check(q, k, v, 1, 1)
    counter = counter if counter is not None else HBMCounter()
    scores = counter.write(counter.read(q) @ counter.read(k).transpose(-1, -2) / math.sqrt(q.shape[-1]))
    probs = counter.write(torch.softmax(counter.read(scores).float(), dim=-1).to(q.dtype))
    return counter.write(counter.read(probs) @ counter.read(v))


def tile_size_for_sram(sram_elements: int, head_dim: int) -> int:
    """Rows per tile when a Q tile, its fp32 accumulator and one K and one V tile share M elements:
    4·B·d ≤ M, so B = ⌊M / 4d⌋ (FlashAttention's B_c = ⌈M/4d⌉).

    定义于 第11章 §11.6
    """
    block = sram_elements // (4 * head_dim)
    if block < 1:
        raise ValueError(f"SRAM of {sram_elements} elements cannot hold 4 rows of head_dim {head_dim}")
    return block


def standard_io_elements(seq_len: int, head_dim: int) -> int:
    """HBM elements moved by standard attention: 4Nd + 4N² (Θ(Nd + N²)).

    定义于 第11章 §11.6
    """
    return 4 * seq_len * head_dim + 4 * seq_len * seq_len


def flash_io_elements(seq_len: int, head_dim: int, block_m: int) -> int:
    """HBM elements moved by the tiled forward (non-causal, Q tiles outer): Q once, O once, and K and V
    once per Q tile: 2Nd + 2Nd·⌈N/B_r⌉. With B_r = M/4d this is ≈ 8N²d²/M = Θ(N²d²/M).

    定义于 第11章 §11.6
    """
    return 2 * seq_len * head_dim + 2 * seq_len * head_dim * math.ceil(seq_len / block_m)
