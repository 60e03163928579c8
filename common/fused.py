"""Serving-time fusion of the Llama projections: one QKV matmul, one gate/up matmul, and on CPU
weights prepacked for oneDNN.

Why: at decode batch sizes every matmul of a 135M model is small (M = batch, K = 576), so per-call
overhead and weight layout matter as much as FLOPs. Concatenating q/k/v (and gate/up) turns 5
matmuls per layer into 2 larger ones, and `torch.ops.mkldnn._reorder_linear_weight` stores the
weight in oneDNN's blocked layout once instead of reordering it on every call (what vLLM-cpu and
torch.compile's freezing do). Measured on this CPU (ch07 notebook 7): bf16 LM head at batch 64
~2x faster, batch-1 decode matmuls ~1.7x faster. Outputs are the same function: bf16 results equal
F.linear's bit for bit on this machine; on GPU (or without oneDNN) the fused layers use F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def can_prepack(weight: torch.Tensor) -> bool:
    """oneDNN prepacking: CPU tensors in bf16 (if the CPU has bf16 support); fp32 stays on F.linear
    so fp32 runs keep the exact kernels transformers uses (the fp32 exactness check).

    定义于 第11章 §11.7
    """
    return (weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FusedLinear(nn.Module):
    """y = x @ W.T for W = cat(weights) (rows), split back into the parts' widths by the caller.

    定义于 第11章 §11.7
    """

    def __init__(self, *weights: torch.Tensor, prepack: bool = True) -> None:
        super().__init__()
        weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
        self.sizes = [w.shape[0] for w in weights]
        self.packed = prepack and can_prepack(weight)
        # batch-size hint only: oneDNN picks the blocked layout for this M, any M runs
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 64) if self.packed else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)


@torch.no_grad()
def fuse_for_serving(model: nn.Module, prepack: bool = True) -> nn.Module:
    """Give every layer of a `common.llama.Llama` fused projections (in place; the original
    q/k/v/gate/up/down/o modules stay, so the model is unchanged for code that reads them).
    Idempotent. Returns the model.

    定义于 第11章 §11.7
    """
    if getattr(model, "fused", False):
        return model
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv = FusedLinear(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, prepack=prepack)
        attn.out = FusedLinear(attn.o_proj.weight, prepack=prepack)
        mlp.gate_up = FusedLinear(mlp.gate_proj.weight, mlp.up_proj.weight, prepack=prepack)
        mlp.down = FusedLinear(mlp.down_proj.weight, prepack=prepack)
    model.head = FusedLinear(model.lm_head.weight, prepack=prepack)
    model.fused = True
    return model
