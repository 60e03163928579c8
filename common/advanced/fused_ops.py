"""One fused operator three ways: residual add + RMSNorm (vLLM's `fused_add_rms_norm`).

Why fuse: in a decoder layer `h = x + residual; y = rms_norm(h) * w` is three or four memory-bound
passes over the activations in eager PyTorch (add, square-mean, scale, weight). A fused kernel reads x
and residual once and writes h and y once. Why `torch.library`: a C++ function called from Python is
opaque to torch.compile (Dynamo cannot trace a pybind call and breaks the graph); registered as a
custom op with a fake (meta) implementation it becomes one node of the graph, with known output
shapes, and the rest of the model still compiles around it.

Pieces: `add_rms_norm_reference` (unfused torch ops, the reference: F.rms_norm), `load_cpp_extension`
(the C++ kernel, built with torch.utils.cpp_extension.load_inline and cached under .cache/), and the
custom op `torch.ops.llm_labs.fused_add_rms_norm` whose CPU implementation is that kernel. The Triton
version is in common.advanced.triton_add_rmsnorm.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

from common.cpp_extension import CFLAGS, LDFLAGS
from common.paths import CACHE_DIR

CPP_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

// h = x + residual; y = h / sqrt(mean(h^2) + eps) * weight, one read of x/residual and one write of h/y per row.
std::vector<torch::Tensor> fused_add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight,
                                              double eps) {
  TORCH_CHECK(x.device().is_cpu() && residual.device().is_cpu() && weight.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && residual.scalar_type() == torch::kFloat &&
              weight.scalar_type() == torch::kFloat, "float32 tensors only");
  TORCH_CHECK(x.sizes() == residual.sizes(), "x and residual must have the same shape");
  const int64_t cols = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == cols, "weight must have x.size(-1) elements");
  auto xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous();
  auto y = torch::empty_like(xc), h = torch::empty_like(xc);
  const int64_t rows = xc.numel() / cols;
  const float* xp = xc.data_ptr<float>();
  const float* rp = rc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>(); float* hp = h.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * cols; const float* rr = rp + r * cols;
      float* hr = hp + r * cols; float* yr = yp + r * cols;
      float sum = 0.f;
      for (int64_t c = 0; c < cols; ++c) { float v = xr[c] + rr[c]; hr[c] = v; sum += v * v; }
      const float inv = 1.f / std::sqrt(sum / static_cast<float>(cols) + static_cast<float>(eps));
      for (int64_t c = 0; c < cols; ++c) yr[c] = hr[c] * inv * wp[c];
    }
  });
  return {y, h};
}
"""


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused: (rms_norm(x + residual) * weight, x + residual) with F.rms_norm.

    定义于 第11章 §11.7
    """
    hidden = x + residual
    return F.rms_norm(hidden, (hidden.shape[-1],), weight, eps), hidden


@functools.cache
def load_cpp_extension(verbose: bool = False):
    """Build (first call, tens of seconds) or load (cached under .cache/torch_extensions) the C++ kernel.

    Returns (module, seconds this call took).

    定义于 第11章 §11.7
    """
    from torch.utils.cpp_extension import load_inline

    build_dir = CACHE_DIR / "torch_extensions" / "llm_labs_fused_add_rms_norm"
    build_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # the repo's kernel flags: without -fopenmp, at::parallel_for in an extension runs on one core
    module = load_inline(name="llm_labs_fused_add_rms_norm", cpp_sources=CPP_SOURCE,
                         functions=["fused_add_rms_norm"], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                         build_directory=str(build_dir), verbose=verbose)
    return module, time.perf_counter() - start


def _check(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} must have the same shape")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must be 1-D with {x.shape[-1]} elements, got {tuple(weight.shape)}")


@torch.library.custom_op("llm_labs::fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual) by the C++ kernel, as one torch op.

    定义于 第11章 §11.7
    """
    _check(x, residual, weight)
    module, _ = load_cpp_extension()
    y, h = module.fused_add_rms_norm(x, residual, weight, eps)
    return y, h


@fused_add_rms_norm.register_fake
def _fused_add_rms_norm_fake(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes and dtypes only: what torch.compile needs to trace through the op without running it."""
    _check(x, residual, weight)
    return torch.empty_like(x), torch.empty_like(x)
