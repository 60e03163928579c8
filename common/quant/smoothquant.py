"""SmoothQuant (Xiao et al., 2022): W8A8 with activation outliers migrated into the weights.

LLM activations have a few channels whose magnitude is 10–100× the rest; a per-token INT8 scale
set by those outliers crushes every other channel. SmoothQuant divides channel j of the
activations by s_j = max|X_j|^α / max|W_j|^(1−α) and multiplies column j of W by s_j (folded into
the previous RMSNorm or linear, like AWQ), which flattens the activations at the weights' expense;
α (the migration strength) balances the two. Then both sides are INT8: weights per output channel
(static), activations per token (dynamic, computed at run time), and the product is an INT32 matmul.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model.llama import DecoderLayer
from .awq import SCALE_GROUPS, fold_scale
from .rtn import quantize


def smooth_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α) (clamped away from 0).

    定义于 第8章 §8.2.1
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"migration strength alpha must be in [0, 1], got {alpha}")
    a = act_absmax.float().clamp_min(1e-5)
    w = weight_absmax.float().clamp_min(1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp_min(1e-5)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric INT8 per row: codes int8 [n, d] and scales [n, 1].

    定义于 第8章 §8.2.1
    """
    scale = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-8) / 127
    return torch.clamp(torch.round(x.float() / scale), -127, 127).to(torch.int8), scale


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a [n, k] int8 · b_t [k, m] int8 -> int32, exactly (torch._int_mm where it runs, else int64 matmul).

    定义于 第8章 §8.2.1
    """
    if a.shape[0] > 16 or a.device.type == "cpu":
        try:
            return torch._int_mm(a, b_t)
        except RuntimeError:
            pass
    return (a.long() @ b_t.long()).int()


class W8A8Linear(nn.Module):
    """y = (q_x · q_Wᵀ) ⊙ s_x ⊗ s_W: INT8 weights per output channel, INT8 activations per token.

    定义于 第8章 §8.2.1
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        qt = quantize(weight.detach(), 8, True, "channel")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("codes_t", qt.q.T.contiguous())  # [in, out] for the int matmul
        self.register_buffer("w_scale", qt.scale[:, 0].float())
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "W8A8Linear":
        return cls(linear.weight, None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, sx = quantize_per_token(x.reshape(-1, shape[-1]))
        acc = int8_matmul(q, self.codes_t)
        y = (acc.float() * sx * self.w_scale).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    @property
    def weight_bytes(self) -> int:
        return self.codes_t.nbytes + self.w_scale.numel() * 2 + (0 if self.bias is None else self.bias.nbytes)


def smooth_layer(layer: DecoderLayer, inputs: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, float]:
    """Fold SmoothQuant scales into one decoder layer (o_proj is left unsmoothed: with GQA its input
    channels do not map one-to-one onto v_proj's rows). Returns the activation max/median ratio before/after.

    定义于 第8章 §8.2.1
    """
    ratios: dict[str, float] = {}
    for linears, prev in SCALE_GROUPS:
        short = linears[0].rsplit(".", 1)[-1]
        x = inputs[short].float()
        act_max = x.abs().amax(0)
        w_max = torch.cat([layer.get_submodule(n).weight for n in linears], 0).abs().amax(0).float()
        s = smooth_scales(act_max, w_max, alpha)
        fold_scale(layer, linears, prev, s)
        ratios[short] = float(act_max.max() / act_max.median())
        ratios[short + "_smoothed"] = float((act_max / s).max() / (act_max / s).median())
    return ratios


def w8a8_layer(layer: DecoderLayer) -> None:
    """Replace every projection of the layer by a W8A8Linear.

    定义于 第8章 §8.2.1
    """
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        parent, _, child = name.rpartition(".")
        setattr(layer.get_submodule(parent), child, W8A8Linear.from_linear(layer.get_submodule(name)))
