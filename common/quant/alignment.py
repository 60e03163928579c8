"""Training/inference precision alignment (exercise 8.5): how far the rollout engine's log-probabilities
drift from the trainer's, and whether a prompt's result depends on what else runs in the batch.

In RL fine-tuning the rollout engine (bf16, INT8 or INT4 weights, batched, chunked prefill) samples the
tokens and the trainer (here: an fp32 transformers forward) rescores them. Off-policy corrections weight
each token by the importance ratio r = exp(logp_train - logp_rollout); truncated importance sampling caps
r at a constant (2 here). `mismatch_stats` summarises that gap; `rescore_logprobs` is the trainer side;
`compare_runs` measures batch invariance (Thinking Machines, "Defeating Nondeterminism in LLM Inference").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


def sampled_logprobs(token_ids: Sequence[int], logprobs: Sequence[dict[int, float]]) -> list[float]:
    """The logprob of each sampled token, from the engine's per-step {token id: logprob} dicts.

    定义于 第8章 §8.8
    """
    if len(token_ids) != len(logprobs):
        raise ValueError(f"{len(token_ids)} tokens but {len(logprobs)} logprob entries")
    out = []
    for step, (tok, entry) in enumerate(zip(token_ids, logprobs)):
        if entry is None or tok not in entry:
            raise ValueError(f"step {step}: no logprob for the sampled token {tok} (ask with logprobs=N)")
        out.append(float(entry[tok]))
    return out


@torch.no_grad()
def rescore_logprobs(hf_model: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> torch.Tensor:
    """The trainer's view: log p(completion token | prefix) for every completion token, from one forward of
    `hf_model` over prompt + completion in the model's dtype, log_softmax in fp32. Shape (len(completion),).

    定义于 第8章 §8.8
    """
    if not prompt_ids or not completion_ids:
        raise ValueError("rescoring needs a non-empty prompt and completion")
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=hf_model.device)
    logits = hf_model(input_ids=ids).logits[0].float()
    # the logits at position t predict token t+1: rows len(prompt)-1 .. end-1 predict the completion
    rows = logits[len(prompt_ids) - 1: ids.shape[1] - 1]
    target = ids[0, len(prompt_ids):]
    return torch.log_softmax(rows, dim=-1).gather(-1, target[:, None])[:, 0].cpu()


@dataclass(frozen=True)
class MismatchStats:
    """Rollout vs trainer gap over n sampled tokens (samples drawn from the rollout policy).

    定义于 第8章 §8.8
    """
    n: int
    abs_mean: float          # mean |logp_train - logp_rollout|
    abs_max: float
    kl_k1: float             # E_rollout[logp_rollout - logp_train]: unbiased KL(rollout || train) estimate
    kl_k3: float             # E_rollout[r - 1 - log r], r = p_train / p_rollout: unbiased and >= 0 per sample
    ratio_quantiles: dict[float, float]
    clipped_high: float      # share of tokens with r > clip
    clipped_low: float       # share of tokens with r < 1 / clip


RATIO_QUANTILES = (0.001, 0.01, 0.5, 0.99, 0.999)


def mismatch_stats(logp_train: torch.Tensor | Sequence[float], logp_rollout: torch.Tensor | Sequence[float],
                   clip: float = 2.0) -> MismatchStats:
    """|Δlogp|, two KL estimators (Schulman's k1 and k3) and the importance ratio's distribution and clipped
    shares, for tokens sampled by the rollout policy and rescored by the trainer.

    定义于 第8章 §8.8
    """
    train = torch.as_tensor(logp_train, dtype=torch.float64).flatten()
    rollout = torch.as_tensor(logp_rollout, dtype=torch.float64).flatten()
    if train.shape != rollout.shape or train.numel() == 0:
        raise ValueError(f"need two equally long, non-empty logprob vectors, got {train.numel()} and "
                         f"{rollout.numel()}")
    if clip <= 1.0:
        raise ValueError(f"clip must be > 1, got {clip}")
    log_ratio = train - rollout
    ratio = log_ratio.exp()
    q = torch.quantile(ratio, torch.tensor(RATIO_QUANTILES, dtype=torch.float64))
    return MismatchStats(
        n=train.numel(), abs_mean=log_ratio.abs().mean().item(), abs_max=log_ratio.abs().max().item(),
        kl_k1=(-log_ratio).mean().item(), kl_k3=(ratio - 1 - log_ratio).mean().item(),
        ratio_quantiles={p: v.item() for p, v in zip(RATIO_QUANTILES, q)},
        clipped_high=(ratio > clip).double().mean().item(), clipped_low=(ratio < 1 / clip).double().mean().item())


@dataclass(frozen=True)
class RunComparison:
    """One run of a prompt against its reference run (e.g. alone vs inside a batch).

    定义于 第8章 §8.8
    """
    bitwise_equal: bool          # same tokens and bit-identical sampled-token logprobs
    max_abs_diff: float          # max |Δlogp| over the common prefix of identical tokens
    first_divergent_token: int | None   # index of the first differing generated token, None if identical
    compared_tokens: int


def compare_runs(ref_tokens: Sequence[int], ref_logprobs: Sequence[float],
                 tokens: Sequence[int], logprobs: Sequence[float]) -> RunComparison:
    """Bitwise equality, max |Δlogp| and the first divergent greedy token between two runs of one prompt.
    Logprobs are compared only while the tokens agree (after a divergence the contexts differ).

    定义于 第8章 §8.8
    """
    if len(ref_tokens) != len(ref_logprobs) or len(tokens) != len(logprobs):
        raise ValueError("each run needs one logprob per token")
    n = min(len(ref_tokens), len(tokens))
    first = next((i for i in range(n) if ref_tokens[i] != tokens[i]), None)
    if first is None and len(ref_tokens) != len(tokens):
        first = n
    same = n if first is None else first
    a = torch.tensor(list(ref_logprobs[:same]), dtype=torch.float64)
    b = torch.tensor(list(logprobs[:same]), dtype=torch.float64)
    max_diff = (a - b).abs().max().item() if same else 0.0
    bitwise = first is None and all(x == y for x, y in zip(ref_logprobs, logprobs))
    return RunComparison(bitwise, max_diff, first, same)


def fake_quantize_weights(model: torch.nn.Module, bits: int = 8, granularity: str | int = "channel",
                          names: Sequence[str] | None = None) -> torch.nn.Module:
    """Replace every decoder projection's weight by its RTN quantize-dequantize (symmetric) in place: the
    numbers a weight-only INT8 kernel multiplies by (dequantize-then-matmul), kept as plain nn.Linear weights
    so the engine's fused serving path runs them unchanged. Returns the model.

    定义于 第8章 §8.8
    """
    from .qlinear import LINEAR_NAMES
    from .rtn import quant_dequant

    wanted = tuple(names) if names is not None else LINEAR_NAMES
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in wanted and isinstance(module, torch.nn.Linear):
                module.weight.copy_(quant_dequant(module.weight.float(), bits, True, granularity))
                count += 1
    if count == 0:
        raise ValueError(f"no nn.Linear named {wanted} in the model (already quantized?)")
    return model
