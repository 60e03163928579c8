"""Row softmax: one program per row, max-subtracted for stability (exp never overflows)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensor


@triton.jit
def _softmax_kernel(x_ptr, out_ptr, n_cols, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(axis=0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_row + cols, mask=mask, other=-float("inf")).to(tl.float32)
    z = x - tl.max(x, axis=0)
    num = tl.exp(z)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * stride_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of x (any leading shape), computed in fp32.

    定义于 第3章 §3.2.7
    """
    check_tensor(x, "x")
    rows = x.contiguous().view(-1, x.shape[-1])
    out = torch.empty_like(rows)
    _softmax_kernel[(rows.shape[0],)](rows, out, rows.shape[1], rows.stride(0),
                                      BLOCK=triton.next_power_of_2(rows.shape[1]))
    return out.view(x.shape)
