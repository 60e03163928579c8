"""Time the real model's decode matmuls at growing batch sizes (chapter 3's knee measurement).

A decode step pushes B tokens (one per request) through every linear layer. Small B: the time
is the time to stream the weights once (memory-bound, flat in B). Large B: the FLOPs dominate
(compute-bound, linear in B). The batch where the two meet is the knee.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.llama import Llama
from .machine import best_time, best_total_time
from .roofline import MatmulShape


def decode_weights(model: Llama, include_lm_head: bool = True) -> list[torch.Tensor]:
    """Weights of every nn.Linear a decode step multiplies by, in forward order ([n, k] each).

    定义于 第3章 §3.2.4
    """
    weights = [m.weight for layer in model.layers for m in layer.modules() if isinstance(m, nn.Linear)]
    if include_lm_head:
        weights.append(model.lm_head.weight)
    return weights


def weight_shapes(weights: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(k, n) of each weight: k inputs → n outputs.

    定义于 第3章 §3.2.4
    """
    return [(w.shape[1], w.shape[0]) for w in weights]


def step_shapes(weights: list[torch.Tensor], batch: int) -> list[MatmulShape]:
    """The matmul shapes of one decode step at `batch` rows, so each can be placed on the roofline.

    定义于 第3章 §3.2.4
    """
    return [MatmulShape(batch, k, n, weights[0].element_size()) for k, n in weight_shapes(weights)]


def _pieces(weights: list[torch.Tensor], max_rows: int = 4096) -> list[torch.Tensor]:
    """Weights split by output rows into pieces of at most `max_rows` (the LM head is 49152 rows)."""
    return [piece for w in weights for piece in w.split(max_rows, dim=0)]


@torch.inference_mode()
def sweep_decode_step(weights: list[torch.Tensor], batches: list[int], rounds: int = 5,
                      progress=None) -> dict[int, float]:
    """Seconds of one pass of B tokens through all `weights`, for each B in `batches`.

    Timed matmul by matmul (LM head in row pieces), best of `rounds` each, summed: see
    common.hardware.machine.best_total_time for why this survives a busy machine. The weights together
    must exceed the last-level cache, or small batches are timed from cache instead of memory.

    定义于 第3章 §3.2.4
    """
    if not weights or not batches or rounds < 1:
        raise ValueError("need weights, batch sizes and rounds >= 1")
    if min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batches}")
    device, dtype = weights[0].device, weights[0].dtype
    pieces = _pieces(weights)
    result = {}
    for b in (progress(batches) if progress else batches):
        inputs = {k: torch.randn(b, k, device=device, dtype=dtype) for k in {w.shape[1] for w in pieces}}
        fns = [(lambda w=w, x=inputs[w.shape[1]]: F.linear(x, w)) for w in pieces]
        result[b] = best_total_time(fns, rounds, device)
    return result


@torch.inference_mode()
def time_matmul(shape: MatmulShape, dtype: torch.dtype, device: torch.device | str = "cpu",
                repeats: int = 10) -> float:
    """Best-of-`repeats` seconds of one [m, k] @ [k, n] matmul.

    定义于 第3章 §3.2.4
    """
    x = torch.randn(shape.m, shape.k, device=device, dtype=dtype)
    w = torch.randn(shape.n, shape.k, device=device, dtype=dtype)
    return best_time(lambda: F.linear(x, w), repeats, device)


def weight_stream(weights: list[torch.Tensor], min_bytes: int) -> list[torch.Tensor]:
    """`weights` (one matmul's weight from every layer, say), plus copies of them in turn until the
    list holds at least `min_bytes`: timed one after another, each is then read from memory, not cache.

    One 1.8 MB weight timed on its own stays in the last-level cache between calls, so a decode
    matmul timed alone "beats" the memory roofline; a real decode step streams every layer's weights.

    定义于 第3章 §3.2.4
    """
    if not weights:
        raise ValueError("need at least one weight")
    stream = list(weights)
    total = sum(w.numel() * w.element_size() for w in stream)
    i = 0
    while total < min_bytes:
        copy = weights[i % len(weights)].clone()
        stream.append(copy)
        total += copy.numel() * copy.element_size()
        i += 1
    return stream


@torch.inference_mode()
def time_weight_stream(stream: list[torch.Tensor], m: int, rounds: int = 5) -> float:
    """Seconds of one pass of x[m, k] through every weight of `stream` in order (best of `rounds`
    per weight, summed: common.hardware.machine.best_total_time). FLOP/s = 2·m·Σ(numel) / seconds.

    定义于 第3章 §3.2.4
    """
    if not stream or m < 1 or rounds < 1:
        raise ValueError("need weights, m >= 1 and rounds >= 1")
    device, dtype = stream[0].device, stream[0].dtype
    inputs = {k: torch.randn(m, k, device=device, dtype=dtype) for k in {w.shape[1] for w in stream}}
    pieces = _pieces(stream)
    fns = [(lambda w=w, x=inputs[w.shape[1]]: F.linear(x, w)) for w in pieces]
    return best_total_time(fns, rounds, device)
