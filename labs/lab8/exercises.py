"""Lab 8: quantization from scratch. Fill in every function; `make lab-8` grades them.

Conventions (the tests check them exactly):
- quantize along the LAST dimension of x; "per-row" means one scale per row of a 2-D tensor;
- round with torch.round (round half to even), clamp after rounding;
- return integer codes as torch.int8 (asymmetric 8-bit codes 0..255 do not fit: use torch.int16 there).
"""
from __future__ import annotations

import torch


def symmetric_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric (absmax) quantization of a 2-D tensor x [rows, cols].

    scale = max|x_row| / (2^(bits-1) - 1)            shape [rows, 1] (float32)
    q     = clamp(round(x / scale), -2^(bits-1), 2^(bits-1) - 1)   dtype int8
    Return (q, scale). Raise ValueError if x is not 2-D or bits is not in 2..8.
    """
    # TODO: compute the per-row absmax, the scale, then round and clamp.
    raise NotImplementedError("symmetric_quantize")


def symmetric_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x̂ = scale · q as float32."""
    # TODO: one line.
    raise NotImplementedError("symmetric_dequantize")


def asymmetric_quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row asymmetric (min-max, zero-point) quantization of x [rows, cols].

    lo = min(min(x_row), 0), hi = max(max(x_row), 0)   (so that 0 is exactly representable)
    scale = (hi - lo) / (2^bits - 1)                     [rows, 1] float32
    zero  = round(-lo / scale)                           [rows, 1] float32 (an integer value)
    q     = clamp(round(x / scale) + zero, 0, 2^bits - 1)  int8 (int16 when bits == 8)
    Return (q, scale, zero).
    """
    # TODO
    raise NotImplementedError("asymmetric_quantize")


def asymmetric_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """x̂ = scale · (q − zero) as float32."""
    # TODO
    raise NotImplementedError("asymmetric_dequantize")


def group_quant_dequant(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric quantize-then-dequantize of x [rows, cols] with one scale per row and per group of
    `group_size` consecutive columns. cols need NOT be a multiple of group_size: the last group is
    shorter (e.g. 576 columns with g=128 -> 4 groups of 128 and one of 64). Return x̂ (float32, x's shape).
    Raise ValueError for group_size < 1.
    """
    # TODO: loop over column groups (or pad + reshape), reuse symmetric_quantize on each group.
    raise NotImplementedError("group_quant_dequant")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit codes in [-8, 7] two per byte: [..., n] int8 -> [..., n/2] uint8.

    Element 2i goes to the LOW nibble, element 2i+1 to the HIGH nibble; a negative code is stored
    as its 4-bit two's complement (code & 0xF). Raise ValueError if n is odd or a code is out of range.
    """
    # TODO: mask with 0xF, shift the odd elements left by 4, OR them together.
    raise NotImplementedError("pack_int4")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: [..., n/2] uint8 -> [..., n] int8 codes in [-8, 7] (sign-extend nibbles > 7)."""
    # TODO
    raise NotImplementedError("unpack_int4")


def gptq_column_update(W: torch.Tensor, U: torch.Tensor, j: int, q_col: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ step on W [rows, cols] with U the upper Cholesky factor of H⁻¹ [cols, cols].

    err = (W[:, j] − q_col) / U[j, j]
    W_new = W with columns j.. updated: W_new[:, j:] = W[:, j:] − err ⊗ U[j, j:]
    (so W_new[:, j] == q_col). Do not modify W in place. Return (W_new, err).
    Raise ValueError if shapes do not match or j is out of range.
    """
    # TODO: this is the inverse-Hessian error feedback (the book's version with H is wrong).
    raise NotImplementedError("gptq_column_update")
