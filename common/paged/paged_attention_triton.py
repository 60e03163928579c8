"""PagedAttention decode as a Triton kernel: one program per (request, query head).

Each program walks its request's block table, loads one block of K/V at a time and keeps the
online-softmax state (m, l, acc) in registers, so the cache is read exactly once and never
gathered. On a machine without CUDA the kernel runs in Triton's interpreter (TRITON_INTERPRET=1,
set here before triton is imported): slow, but it checks the same code the GPU would run.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .paged_attention import check_paged_inputs  # noqa: E402


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale,
                         stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_tb,
                         stride_ob, stride_oh,
                         GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kv_h = h // GROUP
    offs_d = tl.arange(0, HEAD_DIM)
    offs_t = tl.arange(0, BLOCK_SIZE)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d).to(tl.float32) * scale
    n = tl.load(lens_ptr + b)
    m = tl.full((), float("-inf"), tl.float32)
    l = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    for i in range(0, tl.cdiv(n, BLOCK_SIZE)):
        block = tl.load(tables_ptr + b * stride_tb + i).to(tl.int64)
        pos = i * BLOCK_SIZE + offs_t
        valid = pos < n
        base = block * stride_kb + kv_h * stride_kh
        kv_offs = base + offs_t[:, None] * stride_kt + offs_d[None, :]
        k = tl.load(k_ptr + kv_offs, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + kv_offs, mask=valid[:, None], other=0.0).to(tl.float32)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, (acc / l).to(out_ptr.dtype.element_ty))


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Same contract as `common.paged.paged_attention`; head_dim and block_size must be powers of 2.

    定义于 第6章 §6.3.2
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    B, Hq, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    if D & (D - 1) or bs & (bs - 1):
        raise ValueError(f"the Triton kernel needs power-of-two head_dim and block_size, got {D}, {bs}")
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    tables = block_tables.to(device=q.device, dtype=torch.int32).contiguous()
    lens = seq_lens.to(device=q.device, dtype=torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_decode_kernel[(B, Hq)](
        q, k_cache, v_cache, tables, lens, out, 1.0 / D ** 0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), tables.stride(0),
        out.stride(0), out.stride(1), GROUP=Hq // Hkv, BLOCK_SIZE=bs, HEAD_DIM=D)
    return out
