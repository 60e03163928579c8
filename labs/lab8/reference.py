"""Lab 8 reference: the same names, bound to the implementations in common/quant."""
from __future__ import annotations

import torch

from common.quant.gptq import gptq_column_update
from common.quant.packing import pack_int4_uint8, unpack_int4_uint8
from common.quant.rtn import quant_dequant, quantize

__all__ = ["symmetric_quantize", "symmetric_dequantize", "asymmetric_quantize", "asymmetric_dequantize",
           "group_quant_dequant", "pack_int4", "unpack_int4", "gptq_column_update"]


def _two_d(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor, got shape {tuple(x.shape)}")


def symmetric_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    _two_d(x)
    qt = quantize(x, bits, True, "channel")
    return qt.q, qt.scale


def symmetric_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def asymmetric_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _two_d(x)
    qt = quantize(x, bits, False, "channel")
    return qt.q, qt.scale, qt.zero


def asymmetric_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - zero) * scale


def group_quant_dequant(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    _two_d(x)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return quant_dequant(x.float(), bits, True, group_size)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    return pack_int4_uint8(codes, signed=True)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return unpack_int4_uint8(packed, signed=True)
