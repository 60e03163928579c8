"""A decoder layer of the serving layout in two C++ calls around its attention (CPU, bf16).

Why: a decode step of SmolLM2-135M runs 30 layers of about a dozen small ops each. At batch 1 every op computes
for a few microseconds, and calling it from Python (module calls, argument checks, views) costs about as much
again: about a millisecond of a 7 ms step on the repo's CPU (tests cannot show this; `make bench` does). A GPU
engine hides its per-launch cost by capturing the step in a CUDA graph. Here the ops before the attention
(RMSNorm, the packed QKV GEMM, RoPE) are one C++ call, and those after it (O projection, residual add + RMSNorm,
gate/up GEMM, SiLU x up, down GEMM, residual add) another.

How: each call runs the same registered kernels (common.model.cpu_ops, common.model.packed_gemm) through
PyTorch's dispatcher, so its output is bit-identical to the op-by-op layer and torch.profiler still shows every
kernel by name; only Python's cost per op goes away. The attention stays in Python between the two calls,
behind the cache protocol (`AttentionCache`), so every KV cache (contiguous, paged, none) still works.
"""
from __future__ import annotations

import functools

import torch

from ..cpp_extension import bound_ops, cpu_extension_available
from . import cpu_ops, packed_gemm

CPP_SOURCE = r"""
template <class Signature>
static c10::TypedOperatorHandle<Signature> kernel(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
using Unary = torch::Tensor(torch::Tensor);
using Gemm = torch::Tensor(torch::Tensor, torch::Tensor, int64_t);
using Norm = torch::Tensor(torch::Tensor, torch::Tensor, double);
using AddNorm = std::vector<torch::Tensor>(torch::Tensor, torch::Tensor, torch::Tensor, double);
using Rope = void(torch::Tensor, torch::Tensor, torch::Tensor, int64_t, int64_t);

// x @ w^T for a weight packed by pack_weight: its output width is the packed size over x's width
static torch::Tensor packed_linear(torch::Tensor x, const torch::Tensor& packed) {
  static const auto gemm = kernel<Gemm>("llm_labs_kernels::packed_gemm");
  return gemm.call(x, packed, packed.numel() / x.size(-1));
}

// qkv = RoPE(rms_norm(x) @ w_qkv^T) on its first `rotated_heads` heads
torch::Tensor attention_input(torch::Tensor x, torch::Tensor norm_weight, double eps, torch::Tensor qkv_weight,
                              torch::Tensor cos, torch::Tensor sin, int64_t rotated_heads, int64_t head_dim) {
  static const auto rms_norm = kernel<Norm>("llm_labs_kernels::rms_norm");
  static const auto rope = kernel<Rope>("llm_labs_kernels::rope_");
  torch::Tensor qkv = packed_linear(rms_norm.call(x.contiguous(), norm_weight, eps), qkv_weight);
  rope.call(qkv, cos.contiguous(), sin.contiguous(), rotated_heads, head_dim);
  return qkv;
}

// h = residual + attn @ w_o^T; the layer's output h + down(silu(gate) * up) of rms_norm(h)
torch::Tensor attention_output_and_mlp(torch::Tensor attn, torch::Tensor residual, torch::Tensor o_weight,
                                       torch::Tensor norm_weight, double eps, torch::Tensor gate_up_weight,
                                       torch::Tensor down_weight) {
  static const auto add_rms_norm = kernel<AddNorm>("llm_labs_kernels::add_rms_norm");
  static const auto silu_and_mul = kernel<Unary>("llm_labs_kernels::silu_and_mul");
  const auto h_and_normed = add_rms_norm.call(packed_linear(attn.contiguous(), o_weight), residual.contiguous(),
                                              norm_weight, eps);
  return h_and_normed[0] + packed_linear(silu_and_mul.call(packed_linear(h_and_normed[1], gate_up_weight)),
                                             down_weight);
}
"""

SCHEMAS = (("attention_input", "attention_input(Tensor x, Tensor norm_weight, float eps, Tensor qkv_weight, "
                                "Tensor cos, Tensor sin, int rotated_heads, int head_dim) -> Tensor"),
           ("attention_output_and_mlp", "attention_output_and_mlp(Tensor attn, Tensor residual, Tensor o_weight, "
                                        "Tensor norm_weight, float eps, Tensor gate_up_weight, "
                                        "Tensor down_weight) -> Tensor"))


@functools.cache
def cpu_layer_available() -> bool:
    """True when the kernels it calls are available here (cpu_ops, packed_gemm) and it builds. Logged once if not.

    定义于 第11章 §11.7
    """
    if not (cpu_ops.cpu_ops_available() and packed_gemm.packed_gemm_available()):
        return False
    return cpu_extension_available("llm_labs_cpu_layer", CPP_SOURCE, SCHEMAS, "layers call their kernels one by one")


@functools.cache
def _ops():
    """(attention_input, attention_output_and_mlp), in SCHEMAS order; the kernels they call are loaded first."""
    cpu_ops._ops(), packed_gemm._ops()
    return bound_ops("llm_labs_cpu_layer", CPP_SOURCE, SCHEMAS)


def attention_input(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, qkv_weight: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, rotated_heads: int, head_dim: int) -> torch.Tensor:
    """The packed projection [..., (Hq + 2 Hkv) * D] of rms_norm(x), q and k rotated (RoPE): one C++ call.
    qkv_weight is packed (`packed_gemm.pack_weight`); cos/sin [T, D], one position row shared by the batch.

    定义于 第11章 §11.7
    """
    return _ops()[0](x, norm_weight, eps, qkv_weight, cos, sin, rotated_heads, head_dim)


def attention_output_and_mlp(attn: torch.Tensor, residual: torch.Tensor, o_weight: torch.Tensor,
                             norm_weight: torch.Tensor, eps: float, gate_up_weight: torch.Tensor,
                             down_weight: torch.Tensor) -> torch.Tensor:
    """The rest of the layer after its attention `attn` [..., Hq * D]: O projection, residual add + RMSNorm,
    SwiGLU MLP, residual add; one C++ call. The three weights are packed (`packed_gemm.pack_weight`).

    定义于 第11章 §11.7
    """
    return _ops()[1](attn, residual, o_weight, norm_weight, eps, gate_up_weight, down_weight)
