"""Serving cost arithmetic (§10.6): tokens/s and an hourly price → $ per million tokens, a roofline
throughput for a GPU scenario, and what prefix caching saves on an agent task.

The book's agent example counts each step's *new* tokens once ("50 steps × 500 tokens = 25,000
tokens"), but a stateless API re-sends the whole context every step, so the prompt tokens billed
grow quadratically with the number of steps; these functions do the sum.
"""
from __future__ import annotations

from dataclasses import dataclass

from .gpu_specs import GPUSpec
from .memory_calc import decode_floor
from ..model.model_shapes import ModelShape

MILLION = 1e6


def usd_per_million_tokens(tokens_per_s: float, usd_per_hour: float) -> float:
    """$ per 1M generated tokens for a machine rented at `usd_per_hour` that sustains `tokens_per_s`.

    定义于 第10章 §10.6
    """
    if tokens_per_s <= 0 or usd_per_hour < 0:
        raise ValueError(f"need tokens_per_s > 0 and usd_per_hour >= 0, got {tokens_per_s}, {usd_per_hour}")
    return usd_per_hour / (tokens_per_s * 3600) * MILLION


def decode_tokens_per_s(model: ModelShape, spec: GPUSpec, batch: int, context: int,
                        bytes_per_param: float = 2, efficiency: float = 1.0) -> float:
    """Roofline decode throughput (tokens/s over the batch): a step takes the longer of reading the
    weights + every request's KV (decode_floor) and doing 2·params FLOPs per token at the bf16 peak,
    then `efficiency` (0–1] scales it to what a real engine reaches.

    定义于 第10章 §10.6
    """
    if batch < 1 or not 0 < efficiency <= 1:
        raise ValueError(f"need batch >= 1 and 0 < efficiency <= 1, got {batch}, {efficiency}")
    memory_s = decode_floor(model, spec.bandwidth, batch, context, bytes_per_param).seconds
    compute_s = 2 * model.params * batch / spec.peak_flops("bf16")
    return batch / max(memory_s, compute_s) * efficiency


@dataclass(frozen=True)
class AgentTaskTokens:
    """Prompt tokens billed over one append-only agent task.

    定义于 第10章 §10.6
    """
    steps: int
    prompt_tokens: int      # sum over steps of the whole context re-sent at that step
    new_tokens: int         # tokens seen for the first time (the only ones a perfect prefix cache misses)

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens - self.new_tokens

    @property
    def cached_fraction(self) -> float:
        return self.cached_tokens / self.prompt_tokens


def agent_task_tokens(steps: int, growth: int, system: int = 0) -> AgentTaskTokens:
    """Step i (1-based) sends system + i·growth tokens; with an ideal prefix cache only the
    system prompt (once) and each step's `growth` tokens are new.

    定义于 第10章 §10.6
    """
    if steps < 1 or growth < 0 or system < 0:
        raise ValueError(f"need steps >= 1 and non-negative sizes, got {steps}, {growth}, {system}")
    prompt = steps * system + growth * steps * (steps + 1) // 2
    return AgentTaskTokens(steps, prompt, system + steps * growth)


def prompt_cost_usd(uncached_tokens: float, cached_tokens: float, usd_per_mtok: float,
                    cached_usd_per_mtok: float) -> float:
    """Input cost with cache reads billed at their own (lower) price.

    定义于 第10章 §10.6
    """
    return (uncached_tokens * usd_per_mtok + cached_tokens * cached_usd_per_mtok) / MILLION


@dataclass(frozen=True)
class AgentTaskCost:
    """An agent task's cost without and with prompt caching, from its token counts.

    定义于 第10章 §10.6
    """
    tokens: AgentTaskTokens
    no_cache_usd: float
    cached_usd: float

    @property
    def saving(self) -> float:
        return 1 - self.cached_usd / self.no_cache_usd


def agent_task_cost(steps: int, growth: int, usd_per_mtok: float, cached_usd_per_mtok: float,
                    system: int = 0, cached_fraction: float | None = None) -> AgentTaskCost:
    """Prompt cost of one task without and with prefix caching. `cached_fraction` (e.g. measured
    on an engine) replaces the ideal fraction of AgentTaskTokens.

    定义于 第10章 §10.6
    """
    tokens = agent_task_tokens(steps, growth, system)
    frac = tokens.cached_fraction if cached_fraction is None else cached_fraction
    if not 0 <= frac <= 1:
        raise ValueError(f"cached_fraction must be in [0, 1], got {frac}")
    cached = tokens.prompt_tokens * frac
    return AgentTaskCost(tokens, prompt_cost_usd(tokens.prompt_tokens, 0, usd_per_mtok, cached_usd_per_mtok),
                         prompt_cost_usd(tokens.prompt_tokens - cached, cached, usd_per_mtok, cached_usd_per_mtok))
