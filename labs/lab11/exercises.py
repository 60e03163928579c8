"""Lab 11: the kernels behind chapter 11 — a tiled FlashAttention forward, MoE top-k routing with expert
capacity, the Switch/Mixtral load-balancing loss, and the attention-sink + sliding-window mask.

Fill in every function (remove the `raise NotImplementedError`), then run `make lab-11`.
The tests compare against torch SDPA, transformers' `load_balancing_loss_func` and brute-force loops, on
fresh random shapes every run (a failing test prints its seed: rerun it with TEST_SEED=<seed>).
"""
from __future__ import annotations

import torch


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """softmax(q kᵀ / √d) v computed tile by tile, never holding the full [Sq, Sk] score matrix.

    q: [..., Sq, D], k/v: [..., Sk, D] (same leading dims). causal=True means what SDPA's is_causal means:
    query i sees keys 0..i. Keep the statistics and the accumulator in fp32, return q's dtype.
    Raise ValueError when k and v differ in shape, or q and k disagree on leading dims / head_dim.
    """
    # TODO: for each Q tile of block_m rows: running max m, running sum l, accumulator acc (fp32);
    #   for each K/V tile of block_n keys: s = q_tile @ k_tileᵀ * scale (mask future keys if causal),
    #   m_new = max(m, rowmax(s)); p = exp(s - m_new); c = exp(m - m_new);
    #   l = l * c + rowsum(p); acc = acc * c + p @ v_tile; m = m_new.
    #   Write acc / l into the output rows of this tile.
    raise NotImplementedError("flash_attention_forward")


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral's router: softmax over all experts (in fp32), keep the top_k largest probabilities and
    renormalise them to sum to 1. Returns (weights [T, k] fp32, expert ids [T, k] int64), largest first.
    ValueError unless 1 <= top_k <= number of experts."""
    # TODO: torch.softmax, torch.topk, divide by the sum over k
    raise NotImplementedError("route")


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * num_tokens * top_k / num_experts). ValueError if factor <= 0."""
    raise NotImplementedError("expert_capacity")


def capacity_keep(expert_ids: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Bool [T, k]: which (token, slot) assignments fit in their expert's capacity.

    Priority order (Switch/GShard): every token's 1st choice in token order, then every token's 2nd choice,
    and so on. Each expert accepts its first `capacity` assignments in that order and drops the rest."""
    # TODO: walk the assignments in priority order (or vectorise with a cumulative count per expert)
    raise NotImplementedError("capacity_keep")


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch/Mixtral auxiliary loss for router logits [T, E]: E * sum over slots j and experts e of
    f[j, e] * P[e], where f[j, e] = share of tokens whose j-th choice is e and P[e] = mean softmax prob of e.
    Must be differentiable with respect to router_logits (through P)."""
    raise NotImplementedError("load_balancing_loss")


def sink_window_mask(num_queries: int, num_keys: int | None = None, window: int | None = None,
                     num_sinks: int = 0) -> torch.Tensor:
    """Bool [num_queries, num_keys], True = may attend; the queries are the LAST num_queries of the keys.

    Query at absolute position p sees key j when j <= p and (p - j < window or j < num_sinks).
    window=None means plain causal. ValueError if num_queries > num_keys or window < 1 or num_sinks < 0."""
    # TODO: broadcast a column of query positions against a row of key positions
    raise NotImplementedError("sink_window_mask")
