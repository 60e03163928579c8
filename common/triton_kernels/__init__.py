"""First Triton kernels (chapter 3): vector add, fused RMSNorm, row softmax.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU):
the same source, the same program ids and masks, just slow. The variable must be set before
the kernels are decorated with @triton.jit (Triton 3.9 reads it then, so an earlier
`import triton` elsewhere is harmless); every kernel module is imported through this package.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

from .rmsnorm import rmsnorm  # noqa: E402
from .softmax import softmax  # noqa: E402
from .vector_add import vector_add  # noqa: E402

__all__ = ["INTERPRETED", "rmsnorm", "softmax", "vector_add"]
