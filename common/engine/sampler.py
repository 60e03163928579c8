"""Sample one token per row of a logits batch: penalties → greedy rows by argmax, the others by
temperature → top-k → top-p → inverse-CDF draw; then the raw logprobs the rows asked for.
Everything is batched over rows and vocabulary; only the per-request seeded uniforms are drawn in
a loop (one scalar each), so a seeded request gets the same tokens whatever else shares its batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import torch

from ..model.cpu_ops import argmax_rows, use_cpu_ops
from .sequence import Sequence


@dataclass
class Penalties:
    """Per-row penalty settings and the token statistics they act on (only built when a row uses them).

    定义于 第5章 §5.2
    """

    presence: torch.Tensor             # [N] float
    frequency: torch.Tensor            # [N] float
    repetition: torch.Tensor           # [N] float, 1 = off
    output_counts: torch.Tensor        # [N, V] float: how often each token was generated
    prompt_mask: torch.Tensor          # [N, V] bool: token occurs in the prompt


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors on the logits' device.

    定义于 第5章 §5.2
    """

    temperature: torch.Tensor          # [N] float, 0 = greedy
    top_k: torch.Tensor                # [N] long, 0 = off
    top_p: torch.Tensor                # [N] float
    generators: list[torch.Generator | None]
    banned: list[list[int]]            # token ids forbidden per row (min_tokens: eos/stop ids)
    penalties: Penalties | None = None
    num_logprobs: list[int | None] | None = None   # per row: top-N logprobs wanted (None = none)

    @classmethod
    def from_sequences(cls, seqs: Seq[Sequence], eos_token_id: int | None, vocab_size: int,
                       device: torch.device) -> SamplingBatch:
        params = [s.params for s in seqs]
        penalties = None
        if any(p.has_penalties for p in params):
            penalties = Penalties(
                torch.tensor([p.presence_penalty for p in params], device=device),
                torch.tensor([p.frequency_penalty for p in params], device=device),
                torch.tensor([p.repetition_penalty for p in params], device=device),
                token_counts([s.output_ids for s in seqs], vocab_size, device),
                token_counts([s.prompt_ids for s in seqs], vocab_size, device) > 0)
        num_logprobs = [p.logprobs for p in params]
        return cls(torch.tensor([p.temperature for p in params], device=device),
                   torch.tensor([p.top_k for p in params], device=device),
                   torch.tensor([p.top_p for p in params], device=device),
                   [s.generator for s in seqs], [banned_tokens(s, eos_token_id) for s in seqs], penalties,
                   num_logprobs if any(n is not None for n in num_logprobs) else None)


@dataclass
class SamplerOutput:
    """One sampled token per row, plus the logprobs of the rows that asked for them.

    定义于 第5章 §5.2
    """
    token_ids: list[int]
    logprobs: list[dict[int, float] | None] | None   # per row; None when no row asked for logprobs


def banned_tokens(seq: Sequence, eos_token_id: int | None) -> list[int]:
    """Before min_tokens outputs, EOS and the stop token ids may not be sampled (vLLM's rule).

    定义于 第5章 §5.2
    """
    if len(seq.output_ids) >= seq.params.min_tokens:
        return []
    ids = list(seq.params.stop_token_ids)
    if eos_token_id is not None and not seq.params.ignore_eos:
        ids.append(eos_token_id)
    return ids


def token_counts(rows: Seq[Seq[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[N, V] float: occurrences of each token id in each row (one scatter_add, no vocab loop).

    定义于 第5章 §5.2
    """
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), vocab_size, dtype=torch.long)   # pad = an extra, dropped column
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    counts = torch.zeros(len(rows), vocab_size + 1).scatter_add_(1, ids, torch.ones(ids.shape))
    return counts[:, :vocab_size].to(device)


def apply_penalties(logits: torch.Tensor, pen: Penalties) -> torch.Tensor:
    """repetition (HF/vLLM: over prompt + output, divide positive, multiply negative logits), then
    frequency and presence (OpenAI: over the output only). logits [N, V] float; returns a new tensor.

    定义于 第5章 §5.2
    """
    seen = pen.prompt_mask | (pen.output_counts > 0)
    rep = pen.repetition[:, None]
    logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - pen.frequency[:, None] * pen.output_counts - pen.presence[:, None] * (pen.output_counts > 0)


def _uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    u = torch.rand(len(generators))
    for i, gen in enumerate(generators):
        if gen is not None:
            u[i] = torch.rand(1, generator=gen)[0]
    return u.to(device)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's top-k and top-p nucleus. logits: [N, V] float.

    定义于 第5章 §5.2
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))[:, None]
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    before = probs.cumsum(-1) - probs            # mass strictly before each token
    # keep the smallest prefix reaching top_p (≥ 1 token); top_p = 1 keeps everything, even where the rounded
    # cumulative sum reaches 1 before the last token
    drop |= (before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """argmax per row of logits [N, V]. On bf16 CPU logits a C++ kernel reads them in place (bf16 -> fp32 is exact
    and keeps the order, so the ids equal argmax of the fp32 copy, ties to the first index).

    定义于 第5章 §5.2
    """
    return argmax_rows(logits) if logits.dim() == 2 and use_cpu_ops(logits) else logits.float().argmax(-1)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """One token id per row of logits [N, V] (any float dtype). Returns a long tensor [N].

    定义于 第5章 §5.2
    """
    greedy = batch.temperature == 0
    if batch.penalties is None and not any(batch.banned) and bool(greedy.all()):
        return greedy_tokens(logits)
    logits = logits.float()
    if any(batch.banned):
        logits = logits.clone()
        for row, ids in enumerate(batch.banned):
            if ids:
                logits[row, ids] = float("-inf")
    if batch.penalties is not None:
        logits = apply_penalties(logits, batch.penalties)
    tokens = logits.argmax(-1)
    if bool(greedy.all()):
        return tokens
    temp = torch.where(greedy, torch.ones_like(batch.temperature), batch.temperature)
    scaled = apply_top_k_top_p(logits / temp[:, None], batch.top_k, batch.top_p)
    cdf = scaled.softmax(-1).cumsum(-1)
    u = _uniforms(batch.generators, logits.device) * cdf[:, -1]
    drawn = torch.searchsorted(cdf, u[:, None]).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    return torch.where(greedy, tokens, drawn)


def top_logprobs(logits: torch.Tensor, token_ids: torch.Tensor,
                 num_logprobs: list[int | None]) -> list[dict[int, float] | None]:
    """Per row that asks (num_logprobs[i] = N): {token id: logprob} of its N most likely tokens plus
    the sampled one, from the raw logits' fp32 log_softmax (vLLM's default "raw_logprobs").

    定义于 第5章 §5.2
    """
    rows = [i for i, n in enumerate(num_logprobs) if n is not None]
    out: list[dict[int, float] | None] = [None] * len(num_logprobs)
    if not rows:
        return out
    index = torch.tensor(rows, device=logits.device)
    logp = logits.index_select(0, index).float().log_softmax(-1)
    sampled = logp.gather(1, token_ids.index_select(0, index)[:, None]).squeeze(1).tolist()
    k = max(num_logprobs[i] for i in rows)
    top_val, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    top_val, top_ids = top_val.tolist(), top_ids.tolist()
    chosen = token_ids.index_select(0, index).tolist()
    for j, i in enumerate(rows):
        n = num_logprobs[i]
        entry = dict(zip(top_ids[j][:n], top_val[j][:n]))
        entry[chosen[j]] = sampled[j]
        out[i] = entry
    return out


def run_sampler(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """The engine's sampling step: tokens, then the logprobs the rows asked for.

    定义于 第5章 §5.2
    """
    tokens = sample(logits, batch)
    logprobs = top_logprobs(logits, tokens, batch.num_logprobs) if batch.num_logprobs is not None else None
    return SamplerOutput(tokens.tolist(), logprobs)
