"""Fake quantization with a straight-through estimator (STE), for quantization-aware training.

Forward: w̃ = dequant(quant(w)) (per-group absmax, symmetric, codes clipped to [−(2^(b−1)−1), 2^(b−1)−1],
i.e. [−7, 7] at 4 bits as in the book's `_FakeInt4QuantizationSTE`). Backward: round() has zero
gradient almost everywhere, so the STE passes ∂L/∂w̃ straight through as ∂L/∂w. The master
weights stay in high precision; only the forward sees the quantization grid, so training moves
the weights to places where rounding hurts less.
"""
from __future__ import annotations

import torch
from torch import nn

from .qlinear import iter_linears, replace_module
from .rtn import Granularity, quant_dequant


class FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize in forward, identity gradient in backward (straight-through estimator).

    定义于 第8章 §8.7.1
    """
    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int, granularity: Granularity) -> torch.Tensor:
        return quant_dequant(w, bits, True, granularity)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def fake_quant(w: torch.Tensor, bits: int = 4, granularity: Granularity = 32) -> torch.Tensor:
    """Quantize-dequantize in the forward, identity gradient in the backward.

    定义于 第8章 §8.7.1
    """
    return FakeQuantSTE.apply(w, bits, granularity)


def fake_quant_detach(w: torch.Tensor, bits: int = 4, granularity: Granularity = 32) -> torch.Tensor:
    """The same STE written as the PyTorch idiom w + (q(w) − w).detach().

    定义于 第8章 §8.7.1
    """
    return w + (quant_dequant(w.detach(), bits, True, granularity) - w).detach()


class FakeQuantLinear(nn.Linear):
    """nn.Linear whose forward uses the fake-quantized weight (trainable master weight).

    定义于 第8章 §8.7.1
    """

    def __init__(self, linear: nn.Linear, bits: int = 4, granularity: Granularity = 32) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone())
        self.bits, self.granularity = bits, granularity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, fake_quant(self.weight, self.bits, self.granularity), self.bias)


def prepare_qat(model: nn.Module, bits: int = 4, granularity: Granularity = 32) -> nn.Module:
    """Swap every decoder projection for a FakeQuantLinear (in place).

    定义于 第8章 §8.7.1
    """
    for name, linear in list(iter_linears(model)):
        replace_module(model, name, FakeQuantLinear(linear, bits, granularity))
    return model
