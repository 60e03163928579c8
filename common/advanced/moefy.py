"""§11.3: "MoEfication" (Zhang et al. 2022) of a dense SwiGLU MLP: split its neurons into experts and add a router.

A dense MLP is down(act(x)) with act(x) = silu(gate x) * up x over I neurons. Partition the I neurons into E
groups: the MLP is then exactly the sum of E smaller MLPs ("experts"), so running all E experts reproduces the
dense model bit for bit, and running the top-k of them is a sparse MoE with k/E of the MLP's compute.

- `cluster_neurons`: balanced k-means over the neurons' (gate, up) weight rows, E groups of I/E neurons;
- `fit_router`: a linear router fitted by least squares on calibration inputs to predict each expert's
  activation norm (closed form, no training loop);
- `MoEfiedMLP`: the dense weights + groups + router; top_k experts per token (router="oracle" picks the experts
  with the largest true activation norm, an upper bound for any router).
This measures quality only: the masked computation still runs every neuron.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.model.layers import SwiGLU
from common.model.llama import Llama


def cluster_neurons(mlp: SwiGLU, num_experts: int, iterations: int = 5, seed: int = 0,
                    inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Groups [E, I/E] of neuron indices by balanced k-means (cosine). Features: each neuron's |activation| over
    calibration `inputs` [N, H] when given (neurons that fire together share an expert, MoEfication's
    co-activation idea), else its gate and up weight rows.

    定义于 第11章 §11.3
    """
    inter = mlp.gate_proj.weight.shape[0]
    if inter % num_experts:
        raise ValueError(f"{inter} neurons do not split into {num_experts} equal experts")
    size = inter // num_experts
    if inputs is not None:
        with torch.no_grad():
            x = inputs.reshape(-1, inputs.shape[-1]).float()
            feats = F.normalize((F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)).abs().t(), dim=1)
    else:
        feats = F.normalize(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=1).detach().float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = feats[torch.randperm(inter, generator=gen)[:num_experts]]
    for _ in range(iterations):
        scores = feats @ centroids.t()                                  # [I, E]
        order = torch.argsort(scores.reshape(-1), descending=True)     # best (neuron, expert) pairs first
        assign_list = [-1] * inter
        fill = [0] * num_experts
        placed = 0
        for flat in order.tolist():
            neuron, expert = divmod(flat, num_experts)
            if assign_list[neuron] < 0 and fill[expert] < size:
                assign_list[neuron] = expert
                fill[expert] += 1
                placed += 1
                if placed == inter:
                    break
        assign = torch.tensor(assign_list)
        centroids = F.normalize(torch.stack([feats[assign == e].mean(0) for e in range(num_experts)]), dim=1)
    return torch.stack([(assign == e).nonzero().squeeze(1) for e in range(num_experts)])


def expert_norms(mlp: SwiGLU, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """L2 norm of each expert's intermediate activation, [..., E].

    定义于 第11章 §11.3
    """
    act = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    return act[..., groups].norm(dim=-1)


def fit_router(mlp: SwiGLU, inputs: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Router weights [E, H + 1] (last column = bias): least squares from MLP inputs to expert norms.

    定义于 第11章 §11.3
    """
    with torch.no_grad():
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        target = expert_norms(mlp, x, groups)
        design = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        return torch.linalg.lstsq(design, target).solution.t().contiguous()


class MoEfiedMLP(nn.Module):
    """A dense SwiGLU run as E experts, of which each token uses top_k (router: "learned" or "oracle").

    定义于 第11章 §11.3
    """

    def __init__(self, mlp: SwiGLU, groups: torch.Tensor, router: torch.Tensor, top_k: int,
                 router_kind: str = "learned") -> None:
        super().__init__()
        if router_kind not in ("learned", "oracle"):
            raise ValueError(f"router_kind must be 'learned' or 'oracle', got {router_kind!r}")
        self.mlp, self.groups, self.router = mlp, groups, router
        self.top_k, self.router_kind = top_k, router_kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.silu(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)
        if self.router_kind == "oracle":
            scores = act[..., self.groups].norm(dim=-1)
        else:
            scores = F.linear(x.float(), self.router[:, :-1], self.router[:, -1])
        chosen = scores.topk(self.top_k, dim=-1).indices                          # [..., k]
        expert_mask = torch.zeros_like(scores, dtype=act.dtype).scatter_(-1, chosen, 1.0)
        neuron_mask = torch.zeros_like(act)
        neuron_mask[..., self.groups.reshape(-1)] = expert_mask.repeat_interleave(self.groups.shape[1], dim=-1)
        return self.mlp.down_proj(act * neuron_mask)


@torch.no_grad()
def mlp_inputs(model: Llama, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's MLP input (after post_attention_layernorm) on `ids`, from the dense model.

    定义于 第11章 §11.3
    """
    captured: list[torch.Tensor] = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
             for layer in model.layers]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return captured


def moefy(model: Llama, calibration_ids: torch.Tensor, num_experts: int = 8, seed: int = 0,
          cluster_on: str = "activations") -> list[MoEfiedMLP]:
    """Replace every layer's MLP of `model` (in place) by a MoEfiedMLP with top_k = num_experts (= dense);
    set `.top_k` / `.router_kind` on the returned modules to sparsify. cluster_on: "activations" or "weights".

    定义于 第11章 §11.3
    """
    if cluster_on not in ("activations", "weights"):
        raise ValueError(f"cluster_on must be 'activations' or 'weights', got {cluster_on!r}")
    inputs = mlp_inputs(model, calibration_ids)
    moes = []
    for layer, x in zip(model.layers, inputs):
        if isinstance(layer.mlp, MoEfiedMLP):
            raise ValueError("model is already MoEfied")
        groups = cluster_neurons(layer.mlp, num_experts, seed=seed,
                                 inputs=x if cluster_on == "activations" else None)
        moe = MoEfiedMLP(layer.mlp, groups, fit_router(layer.mlp, x, groups), num_experts)
        layer.mlp = moe
        moes.append(moe)
    return moes
