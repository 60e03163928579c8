"""Admission by KV reservation (book 7.4.7, SGLang's "dynamic memory management"): a step-level
simulation, no model needed, so a whole trace runs in milliseconds.

Every running request grows by one token per step and holds ceil(tokens / block_size) blocks.
A new request is admitted when the pool can cover what the policy reserves for it and for every
running request:
* "worst":     prompt + max_tokens        (never preempts, admits few)
* "beta":      prompt + β · max_tokens, β = min(scale · mean(output / max_tokens of the last
               `window` finished requests), cap), starting at beta0 (the book's rule: 0.5, ×1.2, 0.8, 100)
* "on_demand": prompt only                (vLLM: admit greedily, preempt when blocks run out)
When the real usage outgrows the pool, the latest-admitted request is preempted (recompute:
it goes back to the front of the queue and starts over).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

POLICIES = ("worst", "beta", "on_demand")


@dataclass
class SimRequest:
    """A request of the reservation simulator: prompt, max_tokens and its real (hidden) output length.

    定义于 第7章 §7.4.7
    """
    prompt: int
    max_tokens: int
    output: int          # tokens it really generates (≤ max_tokens), unknown to the scheduler


@dataclass
class SimResult:
    """How a reservation policy did on a trace: steps, preemptions and mean batch size.

    定义于 第7章 §7.4.7
    """
    policy: str
    steps: int
    preemptions: int
    mean_running: float
    recomputed_tokens: int
    betas: list[float] = field(default_factory=list)


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def simulate(trace: list[SimRequest], num_blocks: int, block_size: int, policy: str, max_running: int = 256,
             beta0: float = 0.5, scale: float = 1.2, cap: float = 0.8, window: int = 100) -> SimResult:
    """Replay `trace` under a KV reservation policy, step by step, and count steps and preemptions.

    定义于 第7章 §7.4.7
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown reservation policy {policy!r}; use one of {POLICIES}")
    for r in trace:
        if not 1 <= r.output <= r.max_tokens or r.prompt < 1:
            raise ValueError(f"bad request {r}: need prompt >= 1 and 1 <= output <= max_tokens")
        if _blocks(r.prompt + r.max_tokens, block_size) > num_blocks:
            raise ValueError(f"request {r} cannot fit the pool of {num_blocks} blocks")
    waiting = list(range(len(trace)))
    running: list[int] = []
    generated = {i: 0 for i in range(len(trace))}
    ratios: list[float] = []
    beta = beta0
    steps = preemptions = recomputed = running_sum = 0
    betas = []

    def reserve(i: int) -> int:
        r = trace[i]
        extra = {"worst": r.max_tokens, "beta": min(r.max_tokens, round(beta * r.max_tokens)), "on_demand": 0}[policy]
        return _blocks(max(r.prompt + generated[i] + 1, r.prompt + extra), block_size)

    while waiting or running:
        while waiting and len(running) < max_running:
            reserved = sum(reserve(j) for j in running)
            if reserved + reserve(waiting[0]) > num_blocks:
                break
            running.append(waiting.pop(0))
        steps += 1
        for i in running:
            generated[i] += 1
        while sum(_blocks(trace[i].prompt + generated[i], block_size) for i in running) > num_blocks:
            victim = running.pop()        # latest admitted
            recomputed += trace[victim].prompt + generated[victim] - 1
            generated[victim] = 0
            waiting.insert(0, victim)
            preemptions += 1
        running_sum += len(running)
        for i in [i for i in running if generated[i] >= trace[i].output]:
            running.remove(i)
            ratios.append(trace[i].output / trace[i].max_tokens)
            if policy == "beta":
                beta = min(cap, scale * statistics.fmean(ratios[-window:]))
        betas.append(beta)
    return SimResult(policy, steps, preemptions, running_sum / steps, recomputed, betas)
