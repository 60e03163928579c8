"""Fused RMSNorm: one program per row reads the row once, reduces, scales and writes it once.

Unfused PyTorch does pow, mean, rsqrt, mul, mul as separate passes over memory; fusing makes
it one read + one write, which is what matters for a memory-bound op. Same numerics as
common.model.layers.RMSNorm: statistics in fp32, cast back, then times the weight.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensor


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_row, eps, BLOCK: tl.constexpr):
    row = tl.program_id(axis=0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * inv_rms).to(out_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = w.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension of x (any leading shape); weight has x.shape[-1] elements.

    定义于 第3章 §3.2.7
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight", ndim=1)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight has {weight.shape[0]} elements, x's last dimension is {x.shape[-1]}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    rows = x.contiguous().view(-1, x.shape[-1])
    out = torch.empty_like(rows)
    block = triton.next_power_of_2(rows.shape[1])
    _rmsnorm_kernel[(rows.shape[0],)](rows, weight.contiguous(), out, rows.shape[1], rows.stride(0), eps,
                                      BLOCK=block)
    return out.view(x.shape)
