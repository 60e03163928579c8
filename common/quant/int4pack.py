"""Real INT4 decode on CPU: our group-wise INT4 weights fed to torch's int4 matmul kernel.

`QuantLinear` (qlinear.py) rebuilds a bf16 weight from its codes at every call, so it saves memory but
not time. `Int4PackLinear` instead hands the 4-bit codes to `torch.ops.aten._weight_int4pack_mm_for_cpu`
(the "tinygemm" CPU kernel torchao's CPU int4 path calls), which reads 4 bits per weight from memory and
dequantizes in registers: decode, which streams every weight once per token, reads ~4x fewer bytes.

The kernel's format, and how ours maps onto it (checked against aten/src/ATen/native/cpu/int4mm_kernel.cpp
and torchao's Int4OpaqueTensor):
- codes: an int32 [N, K] tensor of unsigned nibbles 0..15, packed once by
  `torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, inner_k_tiles)` into uint8 [N, K/2]
  (blocks of 64 output rows with AVX512, 32 with AVX2; inner_k_tiles is ignored on CPU);
- scales_and_zeros: [K/g, N, 2] in the activation dtype, dequantized as ŵ = (q − 8)·scale + zero, with
  a *floating-point* zero added after the scale (tinygemm's convention);
- group size g ∈ {32, 64, 128, 256}, K a multiple of g, N a multiple of 16; fp32 accumulation.

Ours (rtn.py, gptq.py, awq.py): ŵ = s·(q − z) with integer z (asymmetric, q ∈ 0..15) or ŵ = s·q
(symmetric, q ∈ −8..7). So: asymmetric keeps q and uses zero = s·(8 − z); symmetric stores q + 8 and
zero = 0. Both are the same numbers, up to rounding scale and zero to the activation dtype (bf16: 8
mantissa bits, i.e. ≤ 2⁻⁹ relative per scale). A ragged last group (SmolLM2: K = 576 = 4·128 + 64 at
g128) is expressed with a smaller kernel group (g64: each 128-group becomes two 64-groups with the same
scale and zero), which is exact; a K that is not a multiple of 32 (the `tiny` model's 176) is padded
with zero columns, N with zero rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .qlinear import LINEAR_NAMES, QuantLinear, replace_module
from .rtn import QuantizedTensor, quantize

KERNEL_GROUP_SIZES = (32, 64, 128, 256)
ROW_MULTIPLE = 16   # the kernel's smallest block of output rows
INNER_K_TILES = 1   # a CUDA tiling parameter; the CPU packing ignores it (torchao passes 1 as well)


def kernel_group_size(group_size: int, in_features: int) -> int:
    """The largest kernel group size that divides both our group size and K (after padding K to 32).

    定义于 第8章 §8.3
    """
    k = -(-in_features // 32) * 32
    for g in sorted(KERNEL_GROUP_SIZES, reverse=True):
        if group_size % g == 0 and k % g == 0:
            return g
    raise ValueError(f"group size {group_size} cannot be expressed with the kernel's groups "
                     f"{KERNEL_GROUP_SIZES} (it must be a multiple of 32)")


def tinygemm_params(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unsigned codes [N, K] int32, scale [N, G], additive zero [N, G]) in fp32, in our groups of qt.group_size:
    ŵ = (codes − 8)·scale + zero equals our dequantized weight.

    定义于 第8章 §8.3
    """
    if qt.bits != 4:
        raise ValueError(f"Int4PackLinear needs 4-bit codes, got {qt.bits}-bit")
    if qt.per_tensor or qt.q.dim() != 2:
        raise ValueError("Int4PackLinear needs a 2-D weight quantized per group or per channel")
    scale = qt.scale.float()
    if qt.zero is None:   # symmetric: s·q = s·((q + 8) − 8)
        return qt.q.to(torch.int32) + 8, scale, torch.zeros_like(scale)
    return qt.q.to(torch.int32), scale, scale * (8.0 - qt.zero.float())


class Int4PackLinear(nn.Module):
    """y = x · Ŵᵀ (+ bias) computed by torch's CPU int4 kernel straight from 4-bit codes.

    Several parts (e.g. q, k, v sharing one input) can be stacked into one kernel call; `split(x)` returns
    the parts' outputs.

    定义于 第8章 §8.3
    """

    def __init__(self, parts: list[QuantizedTensor] | QuantizedTensor, bias: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        parts = [parts] if isinstance(parts, QuantizedTensor) else list(parts)
        if not parts:
            raise ValueError("Int4PackLinear needs at least one quantized weight")
        group, k = parts[0].group_size, parts[0].q.shape[1]
        if any(p.group_size != group or p.q.shape[1] != k for p in parts):
            raise ValueError("stacked parts must share in_features and group size")
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"the int4 kernel computes in bf16, fp16 or fp32, got {dtype}")
        codes, scale, zero = (torch.cat(t) for t in zip(*(tinygemm_params(p) for p in parts)))
        self.sizes = [p.q.shape[0] for p in parts]
        self.in_features, self.out_features, self.group_size = k, sum(self.sizes), group
        self.kernel_group_size = g = kernel_group_size(group, k)
        # our groups -> kernel groups (each of our groups repeats group/g times; a short last group fits)
        k_pad = -(-k // g) * g
        n_pad = -(-self.out_features // ROW_MULTIPLE) * ROW_MULTIPLE
        scale = scale.repeat_interleave(group // g, dim=1)[:, : k_pad // g]
        zero = zero.repeat_interleave(group // g, dim=1)[:, : k_pad // g]
        codes = F.pad(codes, (0, k_pad - k, 0, n_pad - self.out_features), value=8)   # 8 = the code of 0
        scale = F.pad(scale, (0, k_pad // g - scale.shape[1], 0, n_pad - self.out_features))
        zero = F.pad(zero, (0, k_pad // g - zero.shape[1], 0, n_pad - self.out_features))
        self.k_pad, self.n_pad = k_pad - k, n_pad - self.out_features
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.contiguous(), INNER_K_TILES))
        self.register_buffer("scales_and_zeros", torch.stack((scale, zero), dim=-1).transpose(0, 1)
                             .contiguous().to(dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_quant_linear(cls, *modules: QuantLinear, dtype: torch.dtype = torch.bfloat16) -> "Int4PackLinear":
        """From our RTN / GPTQ / AWQ `QuantLinear`s (stacked when several share an input): the same Ŵ."""
        if any(m.bias is not None for m in modules) and len(modules) > 1:
            raise ValueError("stacking layers with a bias is not supported")
        return cls([m.quantized_tensor() for m in modules], modules[0].bias, dtype)

    @classmethod
    def from_linear(cls, *linears: nn.Linear, group_size: int = 128, symmetric: bool = False,
                    dtype: torch.dtype | None = None) -> "Int4PackLinear":
        """RTN-quantize nn.Linear weights to INT4 (asymmetric by default, like GPTQ/AWQ checkpoints)."""
        if any(lin.bias is not None for lin in linears) and len(linears) > 1:
            raise ValueError("stacking layers with a bias is not supported")
        parts = [quantize(lin.weight.detach(), 4, symmetric, group_size) for lin in linears]
        return cls(parts, linears[0].bias, dtype or linears[0].weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("Int4PackLinear runs torch's CPU int4 kernel; got an input on " + x.device.type)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        if self.k_pad:
            x2 = F.pad(x2, (0, self.k_pad))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.kernel_group_size,
                                                         self.scales_and_zeros)
        if self.n_pad:
            y = y[:, : self.out_features]
        y = y.reshape(*lead, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)

    @torch.no_grad()
    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ [N, K] as the kernel sees it (scales rounded to the kernel dtype): the kernel applied to I."""
        eye = torch.eye(self.in_features, dtype=self.scales_and_zeros.dtype)
        bias, self.bias = self.bias, None
        try:
            return self(eye).T.contiguous()
        finally:
            self.bias = bias

    @property
    def weight_bytes(self) -> int:
        """Bytes the kernel reads per call: 4-bit codes, the scale/zero pairs, the bias."""
        return sum(t.nbytes for t in (self.packed, self.scales_and_zeros, self.bias) if t is not None)

    def extra_repr(self) -> str:
        parts = f" = {'+'.join(map(str, self.sizes))}" if len(self.sizes) > 1 else ""
        return (f"in={self.in_features}, out={self.out_features}{parts}, int4 g{self.group_size} "
                f"(kernel g{self.kernel_group_size}), {self.scales_and_zeros.dtype}")


def _to_int4pack(modules: list[nn.Module], group_size: int, dtype: torch.dtype) -> Int4PackLinear:
    if all(isinstance(m, QuantLinear) for m in modules):
        return Int4PackLinear.from_quant_linear(*modules, dtype=dtype)
    if all(isinstance(m, nn.Linear) for m in modules):
        return Int4PackLinear.from_linear(*modules, group_size=group_size, dtype=dtype)
    raise ValueError(f"cannot convert {[type(m).__name__ for m in modules]} to Int4PackLinear "
                     "(need all nn.Linear or all 4-bit QuantLinear)")


@torch.no_grad()
def int4pack_model(model: nn.Module, group_size: int = 128) -> nn.Module:
    """Swap every decoder projection of a `common.model.llama.Llama` for an `Int4PackLinear` (in place).

    A 4-bit `QuantLinear` (our RTN / GPTQ / AWQ result) keeps its exact codes, scales and zeros; a plain
    nn.Linear is first RTN-quantized (asymmetric, `group_size`). The kernel computes in the model's dtype.
    On the serving layout (`load_model(name, fused=True)`, common.model.fused) the packed qkv_proj and gate_up_proj
    become one kernel call each (groups run along K, so packing the rows changes no code or scale); the LM
    head keeps its dtype (packed for common.model.packed_gemm there).

    定义于 第8章 §8.3
    """
    dtype = model.dtype
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in LINEAR_NAMES and isinstance(module, (nn.Linear, QuantLinear)):
            replace_module(model, name, _to_int4pack([module], group_size, dtype))
    return model


def decode_bytes_per_token(model: nn.Module) -> int:
    """Weight bytes one decode step reads: every projection and the LM head (the embedding lookup reads
    one row, the norms are negligible). What a bandwidth-bound decode step costs: this / bytes per second.

    定义于 第8章 §8.3
    """
    total = 0
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, Int4PackLinear) or (short in LINEAR_NAMES and hasattr(module, "weight_bytes")):
            total += int(module.weight_bytes)
        elif short in LINEAR_NAMES and isinstance(module, nn.Linear):
            total += module.weight.nbytes
    head = model.lm_head
    return total + head.weight.nbytes + (0 if head.bias is None else head.bias.nbytes)


__all__ = ["Int4PackLinear", "int4pack_model", "kernel_group_size", "tinygemm_params", "decode_bytes_per_token",
           "KERNEL_GROUP_SIZES"]
