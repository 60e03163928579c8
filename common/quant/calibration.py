"""Calibration plumbing shared by GPTQ, AWQ and SmoothQuant: run the model one decoder layer at a
time and hand each layer the inputs its linear layers actually see.

Layer-wise ("sequential") processing feeds layer i with the outputs of the already-quantized
layers 0..i-1, so each layer's quantization compensates for the error upstream of it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..model.llama import DecoderLayer, Llama
from .qlinear import LINEAR_NAMES


def calibration_batches(token_ids: list[int] | torch.Tensor, num_seqs: int, seq_len: int) -> torch.Tensor:
    """Cut a token stream into [num_seqs, seq_len] non-overlapping windows.

    定义于 第8章 §8.2.1
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    need = num_seqs * seq_len
    if ids.numel() < need:
        raise ValueError(f"calibration needs {need} tokens ({num_seqs}×{seq_len}), the text has {ids.numel()}")
    return ids[:need].reshape(num_seqs, seq_len)


@torch.no_grad()
def capture_inputs(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs [tokens, in_features] of each projection of `layer` for hidden states x, and the layer's output.

    定义于 第8章 §8.2.1
    """
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in layer.named_modules():
        short = name.rsplit(".", 1)[-1]
        if short in LINEAR_NAMES:
            def hook(_m: nn.Module, args: tuple, _out: torch.Tensor, short: str = short) -> None:
                seen[short] = args[0].reshape(-1, args[0].shape[-1]).detach()
            hooks.append(module.register_forward_hook(hook))
    try:
        out = layer(x, cos, sin, None)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


@torch.no_grad()
def run_layerwise(model: Llama, calib_ids: torch.Tensor,
                  process: Callable[[int, DecoderLayer, dict[str, torch.Tensor]], None],
                  progress: bool = False) -> None:
    """For each decoder layer: capture its linear inputs, call process(i, layer, inputs) (which may
    change the layer in place), then recompute the layer's output with the changed layer.

    定义于 第8章 §8.2.1
    """
    if calib_ids.dim() != 2:
        raise ValueError(f"calib_ids must be [num_seqs, seq_len], got {tuple(calib_ids.shape)}")
    calib_ids = calib_ids.to(model.device)
    positions = torch.arange(calib_ids.shape[1], device=model.device)
    cos, sin = model.rotary(positions, model.dtype)
    x = model.embed_tokens(calib_ids)
    layers = model.layers
    if progress:
        from tqdm.auto import tqdm
        layers = tqdm(layers, desc="layers", leave=False)
    for i, layer in enumerate(layers):
        inputs, _ = capture_inputs(layer, x, cos, sin)
        process(i, layer, inputs)
        x = layer(x, cos, sin, None)
