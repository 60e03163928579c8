"""Input checks shared by the kernel wrappers: a bad tensor must raise, never crash a kernel."""
from __future__ import annotations

import torch

SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(x: torch.Tensor, name: str, ndim: int | None = None) -> None:
    """Reject a bad kernel input with a clear error before it reaches Triton.

    本书无对应章节（工具）
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED:
        raise ValueError(f"{name} has dtype {x.dtype}; supported: {', '.join(map(str, SUPPORTED))}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.cuda.is_available() and x.is_cuda:
        raise ValueError(f"{name} is on {x.device} but CUDA is not available")
    if torch.cuda.is_available() and not x.is_cuda:
        raise ValueError(f"{name} must be on the GPU when CUDA is available (got {x.device})")
