"""Sample one token per row of a logits batch: greedy rows by argmax, the others by
temperature → top-k → top-p → inverse-CDF draw. Everything is batched; only the per-request
seeded uniforms are drawn in a loop (one scalar each), so a seeded request gets the same
tokens whatever else shares its batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors on the logits' device."""

    temperature: torch.Tensor          # [N] float, 0 = greedy
    top_k: torch.Tensor                # [N] long, 0 = off
    top_p: torch.Tensor                # [N] float
    generators: list[torch.Generator | None]
    banned: list[list[int]]            # token ids forbidden per row (min_tokens: eos/stop ids)


def _uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    u = torch.rand(len(generators))
    for i, gen in enumerate(generators):
        if gen is not None:
            u[i] = torch.rand(1, generator=gen)[0]
    return u.to(device)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's top-k and top-p nucleus. logits: [N, V] float."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))[:, None]
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    before = probs.cumsum(-1) - probs            # mass strictly before each token
    drop |= before >= top_p[:, None]             # keep the smallest prefix reaching top_p (≥ 1 token)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """One token id per row of logits [N, V] (any float dtype). Returns a long tensor [N]."""
    logits = logits.float()
    if any(batch.banned):
        logits = logits.clone()
        for row, ids in enumerate(batch.banned):
            if ids:
                logits[row, ids] = float("-inf")
    greedy = batch.temperature == 0
    tokens = logits.argmax(-1)
    if bool(greedy.all()):
        return tokens
    temp = torch.where(greedy, torch.ones_like(batch.temperature), batch.temperature)
    scaled = apply_top_k_top_p(logits / temp[:, None], batch.top_k, batch.top_p)
    cdf = scaled.softmax(-1).cumsum(-1)
    u = _uniforms(batch.generators, logits.device) * cdf[:, -1]
    drawn = torch.searchsorted(cdf, u[:, None]).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    return torch.where(greedy, tokens, drawn)
