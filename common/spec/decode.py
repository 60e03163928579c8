"""The single-request draft-verify loop on the from-scratch model and the contiguous KV cache.

The target cache holds K/V for every committed token except the newest one ("pending"). Each
step feeds [pending, d_1..d_k] in ONE forward pass (k+1 query rows, causal inside the block),
so row i scores the token after d_i. After verification n drafts survive: the cache keeps
pending + d_1..d_n and we set seq_len back to that length. For a contiguous cache this rollback is
complete: attention reads only positions [0, seq_len) and the next step writes its K/V starting at
seq_len, overwriting the rejected tokens' stale rows before anyone can read them. (A paged cache
must also free the pages those rows occupied.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..device import synchronize
from ..model.generate import _check_context
from ..model.kv_cache import KVCache
from ..model.llama import Llama
from .drafters import Drafter
from .verify import greedy_verify, speculative_verify


@dataclass
class SpecResult:
    """New tokens plus what the chapter measures: proposals, acceptances and where time went.

    定义于 第9章 §9.2
    """
    tokens: list[int]
    target_steps: int = 0            # verification passes (the prefill is not counted)
    proposed: int = 0                # draft tokens sent to the target
    accepted: int = 0                # draft tokens the target kept
    rejections: int = 0              # steps that ended on a rejected draft token
    draft_s: float = 0.0
    target_s: float = 0.0
    prefill_s: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:
        """New tokens per verification pass (the first token comes from the prefill)."""
        return (len(self.tokens) - 1) / max(self.target_steps, 1)

    @property
    def alpha(self) -> float:
        """Per-token acceptance rate among the draft tokens the target actually tested (every
        accepted token, plus the one rejected token of each step that stopped early)."""
        tested = self.accepted + self.rejections
        return self.accepted / tested if tested else float("nan")

    @property
    def acceptance_ratio(self) -> float:
        """accepted / proposed (counts untested tokens after a rejection as failures)."""
        return self.accepted / self.proposed if self.proposed else float("nan")


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.inference_mode()
def speculative_generate(target: Llama, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                         drafter: Drafter | None, k: int, temperature: float = 0.0,
                         eos_token_id: int | None = None, generator: torch.Generator | None = None) -> SpecResult:
    """Generate with draft-verify. temperature 0: greedy, identical to `greedy_generate`;
    temperature > 0: speculative sampling, distributed exactly as sampling the target at that
    temperature. drafter None or k = 0 is plain decoding through the same loop (the baseline).

    定义于 第9章 §9.2
    """
    if k < 0 or int(k) != k:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).tolist()
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    _check_context(target, len(prompt), max_new_tokens)
    device = target.device
    cache = KVCache(target.config, 1, len(prompt) + max_new_tokens + k + 1, target.dtype, device)
    result = SpecResult(tokens=[])

    def pick(logits_row: torch.Tensor) -> int:
        if temperature == 0:
            return int(logits_row.argmax())
        return int(torch.multinomial(_probs(logits_row, temperature), 1, generator=generator))

    wants_hidden = drafter is not None and getattr(drafter, "uses_target_hidden", False)

    def forward(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [len(ids), vocab] and final hidden states [len(ids), hidden] of one cached forward."""
        hidden = target.hidden_states(torch.tensor([ids], device=device), cache=cache)[0]
        return target.logits(hidden), hidden

    start = time.perf_counter()
    hidden = target.hidden_states(torch.tensor([prompt], device=device), cache=cache)[0, -1:]
    first = pick(target.logits(hidden)[-1])
    if wants_hidden:
        drafter.observe_target_hidden(hidden[-1])
    synchronize(device)
    result.prefill_s = time.perf_counter() - start
    result.tokens.append(first)
    committed = prompt + [first]

    while len(result.tokens) < max_new_tokens and result.tokens[-1] != eos_token_id:
        budget = min(k, max_new_tokens - len(result.tokens) - 1)  # the step adds n accepted + 1
        t0 = time.perf_counter()
        draft = drafter.propose(committed, budget, temperature, generator) if drafter and budget > 0 else None
        proposal = draft.tokens[:budget] if draft else []
        t1 = time.perf_counter()
        base = cache.seq_len
        logits, hidden = forward([committed[-1]] + proposal)
        if temperature == 0:
            n, nxt = greedy_verify(logits, torch.tensor(proposal, dtype=torch.long))
        else:
            q = draft.probs[:len(proposal)].to(device) if proposal else logits.new_zeros(0, logits.shape[-1])
            n, nxt = speculative_verify(_probs(logits, temperature), q, torch.tensor(proposal, dtype=torch.long),
                                        generator)
        cache.seq_len = base + 1 + n  # rollback: keep pending + accepted drafts (see module docstring)
        if wants_hidden:
            drafter.observe_target_hidden(hidden[n])   # the row whose logits produced `nxt`
        synchronize(device)
        t2 = time.perf_counter()
        result.draft_s += t1 - t0
        result.target_s += t2 - t1
        result.target_steps += 1
        result.proposed += len(proposal)
        result.accepted += n
        result.rejections += int(n < len(proposal))
        result.accepted_per_step.append(n)
        new = proposal[:n] + [nxt]
        if eos_token_id is not None and eos_token_id in new:
            new = new[:new.index(eos_token_id) + 1]
        result.tokens.extend(new)
        committed.extend(new)
    return result
