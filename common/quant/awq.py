"""AWQ (Lin et al., 2023): protect salient weight channels by scaling them UP before rounding.

For a linear y = W x, any per-input-channel s > 0 gives W x = (W·diag(s)) (diag(s)⁻¹ x). Quantizing
W·diag(s) multiplies the columns of large-activation channels by s > 1, so their relative rounding
error shrinks; the activations are divided by s, which is folded into the previous op (an RMSNorm
weight or the rows of the previous linear), so inference costs nothing extra. s = mean|x|^α, with α
grid-searched per layer to minimize ‖Q(W·diag(s))·diag(s)⁻¹X − W X‖². (The book writes
W·diag(s)⁻¹ and diag(s)·X, the inverted direction: 勘误, measured in the notebook.)
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.llama import DecoderLayer
from .qlinear import QuantLinear
from .rtn import quant_dequant

# (linears sharing one input, the module whose output is that input)
SCALE_GROUPS = ((("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm"),
                (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm"),
                (("mlp.down_proj",), "mlp.up_proj"))


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^α, normalized so that sqrt(max·min) = 1 (as the AWQ reference does).

    定义于 第8章 §8.2.1
    """
    s = mean_abs.float().clamp_min(1e-5).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(W: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = 128,
                 grid: int = 11, direction: str = "awq") -> tuple[torch.Tensor, float, list[float]]:
    """Best s over α ∈ linspace(0, 1, grid) for W [out, in] and inputs x [n, in].

    direction "awq" scores Q(W·s)·(x/s) (the paper); "book" scores Q(W/s)·(x·s) (the book's formula).
    Returns (s, best α, loss per α).

    定义于 第8章 §8.2.1
    """
    if W.shape[1] != x.shape[1]:
        raise ValueError(f"W has {W.shape[1]} inputs, x has {x.shape[1]}")
    W, x = W.float(), x.float()
    ref = x @ W.T
    mean_abs = x.abs().mean(0)
    losses: list[float] = []
    best = (float("inf"), 0.0, torch.ones_like(mean_abs))
    for alpha in torch.linspace(0, 1, grid).tolist():
        s = awq_scales(mean_abs, alpha)
        if direction == "awq":
            out = (x / s) @ quant_dequant(W * s, bits, False, group_size).T
        elif direction == "book":
            out = (x * s) @ quant_dequant(W / s, bits, False, group_size).T
        else:
            raise ValueError(f"direction must be 'awq' or 'book', got {direction!r}")
        loss = float((out - ref).pow(2).mean())
        losses.append(loss)
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[2], best[1], losses


def fold_scale(layer: DecoderLayer, linears: tuple[str, ...], prev: str, s: torch.Tensor) -> None:
    """W·diag(s) for the linears, previous output ÷ s (RMSNorm weight or the rows of a linear).

    定义于 第8章 §8.2.1
    """
    for name in linears:
        lin = layer.get_submodule(name)
        lin.weight.data = (lin.weight.float() * s).to(lin.weight.dtype)
    p = layer.get_submodule(prev)
    if isinstance(p, nn.Linear):
        p.weight.data = (p.weight.float() / s[:, None]).to(p.weight.dtype)
    else:
        p.weight.data = (p.weight.float() / s).to(p.weight.dtype)


def awq_layer(layer: DecoderLayer, inputs: dict[str, torch.Tensor], bits: int = 4, group_size: int = 128,
              grid: int = 11, max_tokens: int = 1024) -> dict[str, float]:
    """Search and fold AWQ scales for one decoder layer, then replace its linears by RTN QuantLinear (asym).

    定义于 第8章 §8.2.1
    """
    alphas: dict[str, float] = {}
    for linears, prev in SCALE_GROUPS:
        short = linears[0].rsplit(".", 1)[-1]
        x = inputs[short][:max_tokens]  # inputs before folding: the scales leave W·x unchanged
        W = torch.cat([layer.get_submodule(n).weight for n in linears], dim=0)
        s, alpha, _ = search_scale(W, x, bits, group_size, grid)
        fold_scale(layer, linears, prev, s)
        alphas[short] = alpha
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        parent, _, child = name.rpartition(".")
        setattr(layer.get_submodule(parent), child,
                QuantLinear.from_linear(layer.get_submodule(name), bits, False, group_size))
    return alphas
