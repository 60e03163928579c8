"""Whole-model recipes: turn a loaded `common.model.llama.Llama` into each quantized variant (in place).

Every recipe leaves the embedding / tied LM head in the model's dtype (their error would hit every
token, and they are a lookup plus one matmul), as GPTQ/AWQ checkpoints usually do.
"""
from __future__ import annotations

import torch

from ..model.llama import DecoderLayer, Llama
from .awq import awq_layer
from .calibration import run_layerwise
from .gptq import gptq_quantize, hessian
from .qlinear import QuantLinear, quantize_model
from .rtn import QuantizedTensor
from .smoothquant import smooth_layer, w8a8_layer

# (parent module, linears sharing one input) — GPTQ rows are independent, so a shared input
# means one Hessian and one column loop for the concatenated weight.
SHARED_INPUT = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
                ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))


def rtn_model(model: Llama, bits: int, granularity: str | int, symmetric: bool = True) -> Llama:
    """Round-to-nearest every linear layer of the model: the baseline recipe.

    定义于 第8章 §8.6
    """
    return quantize_model(model, bits=bits, symmetric=symmetric, granularity=granularity)


def _split_rows(qt: QuantizedTensor, sizes: list[int]) -> list[QuantizedTensor]:
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        out.append(QuantizedTensor(qt.q[rows], qt.scale[rows], None if qt.zero is None else qt.zero[rows],
                                   qt.bits, qt.group_size, qt.per_tensor))
        start += n
    return out


def gptq_layer(layer: DecoderLayer, inputs: dict[str, torch.Tensor], bits: int = 4, group_size: int = 128,
               symmetric: bool = False, damp: float = 0.01) -> None:
    """GPTQ on one decoder layer's linears, from the inputs captured during calibration.

    定义于 第8章 §8.6
    """
    for parent_name, names in SHARED_INPUT:
        parent = layer.get_submodule(parent_name)
        linears = [getattr(parent, n) for n in names]
        W = torch.cat([lin.weight.detach().float() for lin in linears], 0)
        qt = gptq_quantize(W, hessian(inputs[names[0]]), bits, group_size, symmetric, damp=damp)
        for name, part in zip(names, _split_rows(qt, [lin.out_features for lin in linears])):
            setattr(parent, name, QuantLinear(part))


def gptq_model(model: Llama, calib_ids: torch.Tensor, bits: int = 4, group_size: int = 128,
               progress: bool = False) -> Llama:
    """GPTQ every decoder layer in order, each calibrated on the outputs of the quantized layers before it.

    定义于 第8章 §8.6
    """
    run_layerwise(model, calib_ids, lambda i, layer, inputs: gptq_layer(layer, inputs, bits, group_size),
                  progress)
    return model


def awq_model(model: Llama, calib_ids: torch.Tensor, bits: int = 4, group_size: int = 128, grid: int = 11,
              progress: bool = False) -> dict[int, dict[str, float]]:
    """AWQ every decoder layer; returns the chosen α per layer and linear group.

    定义于 第8章 §8.6
    """
    alphas: dict[int, dict[str, float]] = {}
    run_layerwise(model, calib_ids,
                  lambda i, layer, inputs: alphas.__setitem__(i, awq_layer(layer, inputs, bits, group_size, grid)),
                  progress)
    return alphas


def smoothquant_model(model: Llama, calib_ids: torch.Tensor, alpha: float = 0.5, smooth: bool = True,
                      progress: bool = False) -> dict[int, dict[str, float]]:
    """SmoothQuant (or plain W8A8 with smooth=False) on every decoder layer; returns outlier ratios.

    定义于 第8章 §8.6
    """
    stats: dict[int, dict[str, float]] = {}

    def process(i: int, layer: DecoderLayer, inputs: dict[str, torch.Tensor]) -> None:
        if smooth:
            stats[i] = smooth_layer(layer, inputs, alpha)
        w8a8_layer(layer)

    run_layerwise(model, calib_ids, process, progress)
    return stats
