"""First Triton kernels (chapter 3): vector add, fused RMSNorm, row softmax.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU):
the same source, the same program ids and masks, just slow. The variable must be set before
triton is imported, which is why every kernel module imports triton through this package.
"""
from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before common.triton_kernels without TRITON_INTERPRET=1 "
                           "and there is no GPU; import common.triton_kernels first (or set the variable)")
    os.environ["TRITON_INTERPRET"] = "1"

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

from .rmsnorm import rmsnorm  # noqa: E402
from .softmax import softmax  # noqa: E402
from .vector_add import vector_add  # noqa: E402

__all__ = ["INTERPRETED", "rmsnorm", "softmax", "vector_add"]
