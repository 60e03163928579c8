"""Weight-only quantized linear layers that replace `nn.Linear` inside `common.model.llama.Llama`.

`QuantLinear` keeps INT8 codes, or INT4 codes packed two per byte, plus fp16 scales (and zero
points), and computes y = x · dequant(W)ᵀ. On this CPU that is *dequantize-then-matmul*: every
forward rebuilds the bf16 weight, so it saves memory but not time (a fused kernel such as Marlin
on a GPU, or torchao's int4 CPU kernel, reads the 4-bit codes directly). The model code is not
touched: `quantize_model` swaps modules by name.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from .packing import pack_int4_uint8, unpack_int4_uint8
from .rtn import Granularity, QuantizedTensor, dequantize, quantize

# the decoder projections: the teaching layout's seven, and the serving layout's packed two (common.model.fused)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj")


class QuantLinear(nn.Module):
    """y = x · Ŵᵀ with Ŵ rebuilt from stored codes at every call (weight-only quantization).

    定义于 第8章 §8.3
    """

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if qt.q.dim() != 2:
            raise ValueError(f"QuantLinear needs a 2-D weight, got shape {tuple(qt.q.shape)}")
        self.out_features, self.in_features = qt.q.shape
        self.bits, self.group_size, self.per_tensor = qt.bits, qt.group_size, qt.per_tensor
        self.packed = qt.bits == 4 and self.in_features % 2 == 0
        codes = pack_int4_uint8(qt.q, signed=qt.symmetric) if self.packed else qt.q
        self.register_buffer("codes", codes)
        self.register_buffer("scale", qt.scale.to(torch.float16))
        self.register_buffer("zero", None if qt.zero is None else qt.zero.to(torch.float16))
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, symmetric: bool = True,
                    granularity: Granularity = 128) -> "QuantLinear":
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(quantize(linear.weight.detach(), bits, symmetric, granularity), bias)

    def quantized_tensor(self) -> QuantizedTensor:
        q = unpack_int4_uint8(self.codes, signed=self.zero is None) if self.packed else self.codes
        zero = None if self.zero is None else self.zero.float()
        return QuantizedTensor(q, self.scale.float(), zero, self.bits, self.group_size, self.per_tensor)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.quantized_tensor(), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self._fast_weight(x.dtype), self.bias)

    def _fast_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The same Ŵ as `dequantized_weight`, built with fewer passes over memory (the decode hot path)."""
        if self.per_tensor:
            return self.dequantized_weight(dtype)
        if self.packed:
            q = torch.stack((self.codes & 0xF, self.codes >> 4), dim=-1).reshape(self.out_features, -1)
            q = q.to(torch.int8)
            if self.zero is None:
                q = torch.where(q > 7, q - 16, q)
        else:
            q = self.codes
        g = self.group_size
        scale = self.scale.to(dtype).repeat_interleave(g, dim=1)[:, : self.in_features]
        w = q.to(dtype)
        if self.zero is not None:
            w = w - self.zero.to(dtype).repeat_interleave(g, dim=1)[:, : self.in_features]
        return w * scale

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in (self.codes, self.scale, self.zero, self.bias) if t is not None)

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.per_tensor else f"g{self.group_size}"
        return (f"in={self.in_features}, out={self.out_features}, int{self.bits} {kind}, "
                f"{'sym' if self.zero is None else 'asym'}")


def iter_linears(model: nn.Module, names: tuple[str, ...] = LINEAR_NAMES) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every decoder projection; lm_head and the embedding stay as they are.

    定义于 第8章 §8.3
    """
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names and isinstance(module, nn.Linear):
            yield name, module


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted `name` for `new` (how a quantized layer goes in).

    定义于 第8章 §8.3
    """
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module] | None = None, *,
                   bits: int = 4, symmetric: bool = True, granularity: Granularity = 128) -> nn.Module:
    """Replace every decoder nn.Linear by `make(name, linear)` (default: RTN QuantLinear). In place.

    定义于 第8章 §8.3
    """
    if make is None:
        def make(_name: str, linear: nn.Linear) -> nn.Module:
            return QuantLinear.from_linear(linear, bits, symmetric, granularity)
    for name, linear in list(iter_linears(model)):
        replace_module(model, name, make(name, linear))
    return model


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of all weights, counting a tied embedding/LM head once and quantized layers at their packed size.

    定义于 第8章 §8.3
    """
    # what a checkpoint stores: parameters and persistent buffers; a non-persistent buffer (RoPE's inv_freq)
    # is recomputed when the model is built, so it is not a weight
    stored = {id(t) for t in model.state_dict(keep_vars=True).values()}
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if hasattr(module, "weight_bytes"):
            total += int(module.weight_bytes)
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(t) not in stored or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.nbytes
    return total
