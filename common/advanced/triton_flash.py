"""A fused attention forward in Triton: one program per (Q tile, batch·head), online softmax over K/V tiles.

The same algorithm as `common.advanced.flash.flash_attention_forward`, written as a GPU kernel: S and P
live only in registers/SRAM. Without CUDA it runs in Triton's interpreter (numpy on the CPU; see
common.triton_kernels): the program ids, masks and tile arithmetic are the kernel's, so correctness
checks mean something, timings do not. Unlike the official tutorial there is no autotune, no tensor
descriptors and no allocator: fixed BLOCK_M/BLOCK_N and plain pointer arithmetic, which the interpreter runs.
"""
from __future__ import annotations

import math

import torch

from common.device import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda(__name__)   # before triton's first import

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from common.triton_kernels._checks import check_tensor  # noqa: E402


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, seq_q, seq_k, scale,
                     stride_qh, stride_qs, stride_kh, stride_ks, stride_oh, stride_os,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    tile_m = tl.program_id(0)
    head = tl.program_id(1)
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qs + dims[None, :],
                mask=rows[:, None] < seq_q, other=0.0)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    key_end = seq_k
    if CAUSAL:
        key_end = tl.minimum(seq_k, (tile_m + 1) * BLOCK_M)
    for n0 in range(0, key_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        kv_mask = cols[:, None] < seq_k
        k = tl.load(k_ptr + head * stride_kh + cols[:, None] * stride_ks + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + head * stride_kh + cols[:, None] * stride_ks + dims[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        valid = cols[None, :] < seq_k
        if CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        scores = tl.where(valid, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp(scores - new_max[:, None])
        correction = tl.exp(row_max - new_max)
        row_sum = row_sum * correction + tl.sum(probs, 1)
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v).to(tl.float32)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(o_ptr + head * stride_oh + rows[:, None] * stride_os + dims[None, :],
             out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < seq_q)


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     block_m: int = 32, block_n: int = 32) -> torch.Tensor:
    """Attention of q [B, H, Sq, D] over k/v [B, H, Sk, D] (same heads), SDPA's `is_causal` convention.

    D must be a power of two >= 16 and the blocks powers of two >= 16 (tl.dot's minimum tile).

    定义于 第11章 §11.6
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4)
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    dim = q.shape[-1]
    for name, value in (("head_dim", dim), ("block_m", block_m), ("block_n", block_n)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[2]
    q3 = q.reshape(batch * heads, seq_q, dim).contiguous()
    k3 = k.reshape(batch * heads, seq_k, dim).contiguous()
    v3 = v.reshape(batch * heads, seq_k, dim).contiguous()
    out = torch.empty_like(q3)
    grid = (triton.cdiv(seq_q, block_m), batch * heads)
    _attn_fwd_kernel[grid](q3, k3, v3, out, seq_q, seq_k, 1.0 / math.sqrt(dim),
                           q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), out.stride(0), out.stride(1),
                           HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal)
    return out.view(batch, heads, seq_q, dim)
