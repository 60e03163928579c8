"""out = x + y: the "hello world" of SIMT. Each program (a CUDA block) owns BLOCK elements;
inside it Triton spreads them over the block's threads (num_warps × 32)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_tensor


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(axis=0)                 # which block am I (blockIdx.x)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)  # blockIdx.x * blockDim.x + threadIdx.x, vectorised
    mask = offsets < n                           # the last block may run past the end
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """x + y for two same-shape contiguous tensors; grid = ceil(n / block) programs.

    定义于 第3章 §3.2.7
    """
    check_tensor(x, "x")
    check_tensor(y, "y")
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"x and y must match: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)
    return out


def grid_size(n: int, block: int) -> int:
    """Number of programs (blocks) the launch above uses.

    定义于 第3章 §3.2.7
    """
    return triton.cdiv(n, block)
