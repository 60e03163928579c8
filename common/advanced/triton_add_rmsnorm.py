"""Residual add + RMSNorm as one Triton kernel (the Triton version of common.advanced.fused_ops).

One program per row: load x and residual once, write h = x + residual and y = rms_norm(h) * w once.
On CPU it runs in Triton's interpreter: correct, and slow (numpy per program), so only its results count.
"""
from __future__ import annotations


import torch

from common.device import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda(__name__)   # before triton's first import

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from common.triton_kernels._checks import check_tensor  # noqa: E402


@triton.jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, h_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    tl.store(h_ptr + row * n_cols + cols, h.to(h_ptr.dtype.element_ty), mask=mask)
    inv_rms = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, (h * inv_rms * w).to(y_ptr.dtype.element_ty), mask=mask)


def triton_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual) over the last dimension (statistics in fp32).

    定义于 第11章 §11.7
    """
    check_tensor(x, "x")
    check_tensor(residual, "residual")
    check_tensor(weight, "weight", ndim=1)
    if x.shape != residual.shape or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, residual {tuple(residual.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    cols = x.shape[-1]
    xs, rs = x.contiguous().view(-1, cols), residual.contiguous().view(-1, cols)
    y, h = torch.empty_like(xs), torch.empty_like(xs)
    _add_rmsnorm_kernel[(xs.shape[0],)](xs, rs, weight.contiguous(), y, h, cols, eps,
                                        BLOCK=triton.next_power_of_2(cols))
    return y.view(x.shape), h.view(x.shape)
