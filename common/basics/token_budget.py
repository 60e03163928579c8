"""A token-budget step (book 5.9.4): every running decode gets its one token first, then the rest
of the budget goes to prompt tokens, FIFO, chunking the last prompt that does not fit.

`TokenBudgetScheduler` only decides; `serve_packed` runs its schedule on a real model with
`RaggedKVCache`, one packed forward per step (`common.sim.token_budget.simulate` replays a trace
with the same scheduler and no model). Chapter 7 grows this into an engine with paged memory and preemption.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .batching import RaggedKVCache
from ..model.llama import Llama


@dataclass
class Request:
    """A request of the token-budget toy: prompt and output lengths and arrival step.

    定义于 第5章 §5.10
    """
    rid: int
    prompt_len: int
    output_len: int
    arrival: int = 0            # first step at which it may be scheduled
    prefilled: int = 0
    generated: int = 0
    first_token_step: int | None = None
    finish_step: int | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1 or self.arrival < 0:
            raise ValueError(f"request {self.rid}: prompt_len and output_len must be >= 1 and arrival >= 0")

    @property
    def decoding(self) -> bool:
        return self.prefilled == self.prompt_len and self.finish_step is None


@dataclass
class Step:
    """One scheduled step: the decoding requests and the prefill chunks it runs.

    定义于 第5章 §5.10
    """
    index: int
    decodes: list[int] = field(default_factory=list)
    prefills: list[tuple[int, int]] = field(default_factory=list)   # (rid, tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)

    def batch(self) -> list[tuple[int, int]]:
        return [(rid, 1) for rid in self.decodes] + self.prefills


class TokenBudgetScheduler:
    """Per step: one token for every decode first, the rest of the budget to prefill chunks.

    定义于 第5章 §5.10
    """
    def __init__(self, requests: Sequence[Request], budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1 token, got {budget}")
        self.requests = sorted(requests, key=lambda r: (r.arrival, r.rid))
        self.budget = budget
        self.step_index = 0

    def done(self) -> bool:
        return all(r.finish_step is not None for r in self.requests)

    def schedule(self) -> Step:
        """Decodes first (1 token each, up to the budget), then prompt chunks in arrival order."""
        step = Step(self.step_index)
        live = [r for r in self.requests if r.arrival <= self.step_index and r.finish_step is None]
        for r in live:
            if r.decoding and step.num_tokens < self.budget:
                step.decodes.append(r.rid)
        for r in live:
            left = self.budget - step.num_tokens
            if left == 0:
                break
            if r.prefilled < r.prompt_len:
                step.prefills.append((r.rid, min(left, r.prompt_len - r.prefilled)))
        return step

    def commit(self, step: Step) -> list[int]:
        """Apply a step; returns the rids that emitted a token in it (decodes and finished prefills)."""
        by_id = {r.rid: r for r in self.requests}
        emitted = list(step.decodes)
        for rid, n in step.prefills:
            r = by_id[rid]
            r.prefilled += n
            if r.prefilled == r.prompt_len:
                emitted.append(rid)
        for rid in emitted:
            r = by_id[rid]
            r.generated += 1
            if r.first_token_step is None:
                r.first_token_step = step.index
            if r.generated == r.output_len:
                r.finish_step = step.index
        self.step_index += 1
        return emitted


@torch.inference_mode()
def serve_packed(model: Llama, prompts: Sequence[Sequence[int]], output_lens: Sequence[int], budget: int,
                 arrivals: Sequence[int] | None = None) -> tuple[list[list[int]], list[Step]]:
    """Greedy-decode every prompt with token-budget steps, one packed [1, T] forward per step.
    Returns (new tokens per prompt, the steps). Tokens equal greedy_generate on each prompt alone.

    定义于 第5章 §5.10
    """
    arrivals = arrivals or [0] * len(prompts)
    requests = [Request(i, len(p), o, a) for i, (p, o, a) in enumerate(zip(prompts, output_lens, arrivals))]
    scheduler = TokenBudgetScheduler(requests, budget)
    cache = RaggedKVCache(model.config.num_hidden_layers)
    outputs: list[list[int]] = [[] for _ in prompts]
    steps = []
    while not scheduler.done():
        step = scheduler.schedule()
        if step.num_tokens == 0:          # nothing has arrived yet
            scheduler.commit(step)
            continue
        ids = []
        for rid, n in step.batch():
            if n == 1 and rid in step.decodes:
                ids.append(outputs[rid][-1])
            else:
                done = requests[rid].prefilled
                ids += list(prompts[rid][done:done + n])
        positions = cache.plan(step.batch(), device=model.device)
        hidden = model.hidden_states(torch.tensor([ids], device=model.device), positions, cache)
        ends = torch.tensor([n for _, n in step.batch()], device=model.device).cumsum(0) - 1
        next_tokens = model.lm_head(hidden[0, ends]).argmax(-1).tolist()
        emitted = set(scheduler.commit(step))
        for (rid, _), token in zip(step.batch(), next_tokens):
            if rid in emitted:
                outputs[rid].append(token)
                if requests[rid].finish_step is not None:
                    cache.release(rid)
        steps.append(step)
    return outputs, steps
