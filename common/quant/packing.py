"""INT4 packing: real 4-bit storage for codes that `rtn.quantize` returns one per int8.

- uint8: two codes per byte, element 2i in the low nibble, element 2i+1 in the high nibble
  (GGUF's Q4 blocks and most CPU kernels use nibbles this way);
- int32: eight codes per word, element 8i+k in bits 4k..4k+3 (GPTQ/AWQ checkpoints use this).

Signed codes in [-8, 7] are stored as their 4-bit two's complement; unpacking sign-extends.
Unsigned codes (asymmetric quantization) are in [0, 15].
"""
from __future__ import annotations

import torch


def _check_codes(codes: torch.Tensor, signed: bool, per_word: int) -> None:
    if codes.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    lo, hi = (-8, 7) if signed else (0, 15)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"codes out of the 4-bit range [{lo}, {hi}]: [{int(codes.min())}, {int(codes.max())}]")
    if codes.shape[-1] % per_word:
        raise ValueError(f"last dimension {codes.shape[-1]} must be a multiple of {per_word} to pack")


def pack_int4_uint8(codes: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """[..., n] codes -> [..., n/2] uint8 (low nibble = even element).

    定义于 第8章 §8.3
    """
    _check_codes(codes, signed, 2)
    nib = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def unpack_int4_uint8(packed: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """[..., n/2] uint8 -> [..., n] int8 codes.

    定义于 第8章 §8.3
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8, got {packed.dtype}")
    lo, hi = (packed & 0xF), (packed >> 4)
    out = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1).to(torch.int8)
    return torch.where(out > 7, out - 16, out) if signed else out


def pack_int4_int32(codes: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """[..., n] codes -> [..., n/8] int32 (element 8i+k in bits 4k..4k+3).

    定义于 第8章 §8.3
    """
    _check_codes(codes, signed, 8)
    nib = (codes.to(torch.int64) & 0xF).reshape(*codes.shape[:-1], -1, 8)
    shifts = torch.arange(0, 32, 4, device=codes.device, dtype=torch.int64)
    word = (nib << shifts).sum(-1)  # < 2^32, fits in int64
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def unpack_int4_int32(packed: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """[..., n/8] int32 -> [..., n] int8 codes.

    定义于 第8章 §8.3
    """
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32, got {packed.dtype}")
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nib = (packed.unsqueeze(-1) >> shifts) & 0xF  # arithmetic shift, then mask: sign bits drop out
    out = nib.reshape(*packed.shape[:-1], -1).to(torch.int8)
    return torch.where(out > 7, out - 16, out) if signed else out
