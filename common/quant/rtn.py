"""Round-to-nearest (RTN) quantization: the baseline every other method is measured against.

A tensor is quantized along its last dimension (the input features of a weight [out, in]):
- granularity "tensor": one scale for the whole tensor;
- granularity "channel": one scale per row (per output channel);
- an int g: one scale per row and per group of g consecutive columns. The last group may be
  shorter (SmolLM2's hidden size 576 is not a multiple of 128: 4 groups of 128 + one of 64).

Symmetric:  s = max|x| / (2^(b-1) - 1),  q = clip(round(x/s), -2^(b-1), 2^(b-1)-1),  x̂ = s·q
Asymmetric: s = (max - min) / (2^b - 1), z = round(-min/s), q = clip(round(x/s) + z, 0, 2^b-1),
            x̂ = s·(q - z)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Granularity = str | int


@dataclass
class QuantizedTensor:
    """Integer codes plus the scales (and zero points) that map them back to real numbers.

    q: int8 codes, same shape as the original tensor (packing to 4 bits is `packing`'s job);
    scale, zero: [rows, groups] (rows = all leading dims flattened; 1×1 for per-tensor).

    定义于 第8章 §8.2.1
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group_size: int  # columns per group (= in_features for per-channel / per-tensor)
    per_tensor: bool = False

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    def payload_bytes(self) -> int:
        """Bytes of the packed codes plus fp16 scales/zeros: what a kernel would read."""
        codes = math.ceil(self.q.numel() * self.bits / 8)
        meta = self.scale.numel() * 2 + (self.zero.numel() * 2 if self.zero is not None else 0)
        return codes + meta


def _check(x: torch.Tensor, bits: int) -> None:
    if not torch.is_floating_point(x):
        raise ValueError(f"quantize expects a floating-point tensor, got {x.dtype}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 (codes are stored as int8), got {bits}")
    if x.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")


def _group_view(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, int, bool]:
    """x as [rows, groups, g] (zero-padded when the last group is short), g, per_tensor."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
    cols = rows.shape[1]
    if granularity == "tensor":
        return rows.reshape(1, 1, -1), cols, True
    if granularity == "channel":
        return rows.unsqueeze(1), cols, False
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be 'tensor', 'channel' or a positive group size, got {granularity!r}")
    g = granularity
    pad = (-cols) % g
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(rows.shape[0], -1, g), g, False


def _ragged_extrema(grouped: torch.Tensor, cols: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max per group, ignoring the zero padding of a short last group."""
    pad = grouped.shape[1] * g - cols
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    if pad == 0:
        return lo, hi
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    tail = grouped[:, -1, : g - pad]
    lo[:, -1], hi[:, -1] = tail.amin(-1), tail.amax(-1)
    return lo, hi


def quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
             granularity: Granularity = "channel") -> QuantizedTensor:
    """RTN-quantize x along its last dimension (see the module docstring for the formulas).

    定义于 第8章 §8.2.1
    """
    _check(x, bits)
    cols = x.shape[-1]
    grouped, g, per_tensor = _group_view(x.float(), granularity)
    lo, hi = _ragged_extrema(grouped, cols, g) if not per_tensor else (grouped.amin(-1), grouped.amax(-1))
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(1e-12) / qmax
        q = torch.clamp(torch.round(grouped / scale[..., None]), -qmax - 1, qmax)
        zero = None
    else:
        qmax = 2 ** bits - 1
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # keep 0 exactly representable
        scale = (hi - lo).clamp_min(1e-12) / qmax
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(grouped / scale[..., None]) + zero[..., None], 0, qmax)
    q = q.reshape(q.shape[0], -1)[:, : (cols if not per_tensor else x.numel())]
    q = q.reshape(x.shape).to(torch.int16 if (not symmetric and bits == 8) else torch.int8)
    return QuantizedTensor(q, scale, zero, bits, x.numel() if per_tensor else g, per_tensor)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x̂ = s·q (symmetric) or s·(q − z) (asymmetric), expanding each group's scale over its columns.

    定义于 第8章 §8.2.1
    """
    shape = qt.q.shape
    if qt.per_tensor:
        codes = qt.q.float().reshape(1, 1, -1)
    else:
        rows = qt.q.reshape(-1, shape[-1]).float()
        pad = (-shape[-1]) % qt.group_size
        if pad:
            rows = torch.nn.functional.pad(rows, (0, pad))
        codes = rows.reshape(rows.shape[0], -1, qt.group_size)
    if qt.zero is not None:
        codes = codes - qt.zero[..., None]
    out = (codes * qt.scale[..., None]).reshape(codes.shape[0], -1)
    if not qt.per_tensor:
        out = out[:, : shape[-1]]
    return out.reshape(shape).to(dtype)


def quant_dequant(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
                  granularity: Granularity = "channel") -> torch.Tensor:
    """x̂ = dequantize(quantize(x)) in x's dtype: the 'fake quantization' used to measure error.

    定义于 第8章 §8.2.1
    """
    return quantize(x, bits, symmetric, granularity).dequantize(x.dtype)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(E[x²] / E[(x − x̂)²]) in dB.

    定义于 第8章 §8.2.1
    """
    x, x_hat = x.double(), x_hat.double()
    noise = (x - x_hat).pow(2).mean()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(x.pow(2).mean() / noise))


def theoretical_sqnr_db(bits: int, sinusoid: bool = True) -> float:
    """6.02·b + 1.76 dB: the textbook figure for a full-scale sinusoid (6.02·b for a full-range uniform signal).

    定义于 第8章 §8.2.1
    """
    return 6.02 * bits + (1.76 if sinusoid else 0.0)
