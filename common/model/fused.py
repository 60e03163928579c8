"""The serving layout of the Llama, chosen when the model is built: one packed QKV projection, one packed
gate/up projection, and on CPU bf16 weights prepacked for oneDNN.

`Llama(config, fused=True)` / `load_model(name, fused=True)` build it (and `common.engine.LLM("name")`
loads it); the unfused model with q_proj/k_proj/v_proj/gate_proj/up_proj, what chapters 4-6 teach, stays
the default. Nothing is patched onto a built model.

Why: at decode batch sizes every matmul of a 135M model is small (M = batch, K = 576), so per-call
overhead and weight layout matter as much as FLOPs. Packing q/k/v (and gate/up) turns 5 matmuls per
layer into 2 larger ones, and `torch.ops.mkldnn._reorder_linear_weight` stores the weight in oneDNN's
blocked layout once instead of reordering it on every call (what vLLM-cpu and torch.compile's freezing
do). Outputs are the same function: bf16 results equal F.linear's on this machine; fp32 and GPU weights
are not prepacked and run F.linear, so fp32 stays exact against transformers.

Loading: a checkpoint stores q/k/v and gate/up as separate tensors. `pack_state_dict` concatenates them
into the rows of qkv_proj / gate_up_proj (the idea of nano-vLLM's `packed_modules_mapping`, applied once
to the whole state dict).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gemv import GEMV_MAX_ROWS, gemv, gemv_available

# packed module -> the checkpoint modules whose weights it holds, in row order
PACKED_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def can_prepack(weight: torch.Tensor) -> bool:
    """oneDNN prepacking: CPU tensors in bf16 (if the CPU has bf16 support); fp32 stays on F.linear
    so fp32 runs keep the exact kernels transformers uses (the fp32 exactness check).

    定义于 第11章 §11.7
    """
    return (weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PrepackedLinear(nn.Linear):
    """An nn.Linear that, after `prepack()`, multiplies by a oneDNN-blocked copy of its bf16 CPU weight, or at
    one or two rows (batch-1/2 decode) by the plain weight through the bf16 GEMV kernel (common.model.gemv).

    `weight` stays the ordinary dense parameter (state_dict, quantization and fp32/GPU use it); the copy is
    derived state, never stale: replacing the module (e.g. by a quantized one) drops it, `.to()` rebuilds it,
    and an in-place edit of `weight` (its version counter moves) or a swap of its `.data` rebuilds it at the next call.

    定义于 第11章 §11.7
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **factory: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **factory)
        self.packed_weight: torch.Tensor | None = None
        # (the weight, its version, its storage address) the copy was made from
        self.packed_from: tuple[torch.Tensor, int, int] | None = None
        self.gemv_max_numel = 0   # inputs up to this many elements (GEMV_MAX_ROWS rows) take the bf16 GEMV kernel

    @torch.no_grad()
    def prepack(self) -> None:
        """Build the oneDNN copy if the weight qualifies (`can_prepack`), else run F.linear."""
        weight = self.weight
        # 64 is a batch-size hint only: oneDNN picks the blocked layout for this M, any M runs
        self.packed_weight = (torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 64)
                              if can_prepack(weight) else None)
        small_batch_kernel = (self.packed_weight is not None and self.bias is None and weight.is_contiguous()
                              and gemv_available())
        self.gemv_max_numel = GEMV_MAX_ROWS * self.in_features if small_batch_kernel else 0
        # inference tensors keep no version counter (and cannot be edited outside inference mode)
        self.packed_from = (weight, -1 if weight.is_inference() else weight._version, weight.data_ptr())

    def _packed_is_current(self) -> bool:
        weight, version, address = self.packed_from
        current = self._parameters["weight"]   # not self.weight: nn.Module.__getattr__ is slow on the hot path
        # `weight.data = other` swaps the storage without moving the version counter: the address catches it
        return (current is weight and (version == -1 or current._version == version)
                and current.data_ptr() == address)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is not None:
            if not self._packed_is_current():   # weight replaced or edited in place since prepack
                self.prepack()
            if x.numel() <= self.gemv_max_numel:   # batch 1-2 decode: stream the plain weight once (common.model.gemv)
                return gemv(x, self._parameters["weight"])
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _apply(self, fn, recurse: bool = True):   # .to(), .bfloat16(), ...: the copy follows the new weight
        self.packed_weight = None
        out = super()._apply(fn, recurse)
        self.prepack()
        return out

    def __getstate__(self) -> dict:   # deepcopy / pickle: oneDNN's opaque tensor has no storage to copy
        return {**super().__getstate__(), "packed_weight": None, "packed_from": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.prepack()


def prepack_linears(model: nn.Module) -> nn.Module:
    """Call `prepack()` on every `PrepackedLinear` of a freshly loaded model. Returns the model.

    定义于 第11章 §11.7
    """
    for module in model.modules():
        if isinstance(module, PrepackedLinear):
            module.prepack()
    return model


def pack_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> packed names: "...q_proj.weight", "...k_proj.weight", "...v_proj.weight" become
    one "...qkv_proj.weight" (rows concatenated in that order), gate/up likewise; other tensors pass through.
    A packed module with some of its parts missing is an error.

    定义于 第11章 §11.7
    """
    part_of = {part: (packed, i) for packed, parts in PACKED_MODULES.items() for i, part in enumerate(parts)}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        prefix, _, rest = name.rpartition(".")             # "layers.0.self_attn.q_proj", "weight"
        parent, _, module = prefix.rpartition(".")
        if module in part_of:
            packed, index = part_of[module]
            groups.setdefault(f"{parent}.{packed}.{rest}" if parent else f"{packed}.{rest}", {})[index] = tensor
        else:
            out[name] = tensor
    for name, parts in groups.items():
        packed = name.rsplit(".", 2)[-2]
        if len(parts) != len(PACKED_MODULES[packed]):
            missing = [p for i, p in enumerate(PACKED_MODULES[packed]) if i not in parts]
            raise KeyError(f"{name} needs {PACKED_MODULES[packed]}; the checkpoint lacks {missing}")
        out[name] = torch.cat([parts[i] for i in range(len(parts))])
    return out
