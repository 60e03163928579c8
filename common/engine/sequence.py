"""The state of one sequence inside the engine, and what the engine hands back.

A request with n > 1 becomes n sequences that share the prompt (prefix caching lets them share
its blocks). A sequence's tokens are prompt + outputs; `num_computed` counts the tokens whose
K/V are in the cache. Preemption by recompute just resets `num_computed` to 0.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling_params import SamplingParams


class Status(enum.Enum):
    """Where a sequence is in its lifecycle: waiting, running or finished.

    定义于 第7章 §7.4.1
    """
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One completion's state in the engine: tokens, progress, status, timings and finish reason.

    定义于 第7章 §7.4.1
    """
    seq_id: int
    request_id: str
    index: int                               # which of the request's n completions
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0                        # smaller = more urgent (vLLM's convention)
    arrival: float = field(default_factory=time.perf_counter)
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0                      # prompt tokens served by the prefix cache at admission
    status: Status = Status.WAITING
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    first_scheduled: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_time: float | None = None
    generator: torch.Generator | None = None
    text: str = ""
    logprobs: list[dict[int, float]] | None = None   # per output token (params.logprobs set): id -> logprob

    def __post_init__(self) -> None:
        if self.params.logprobs is not None and self.logprobs is None:
            self.logprobs = []

    def append_token(self, token: int, now: float, logprobs: dict[int, float] | None = None) -> None:
        self.output_ids.append(token)
        self.token_times.append(now)
        if self.logprobs is not None:
            self.logprobs.append(logprobs or {})

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_remaining(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return self.num_tokens - self.num_computed

    @property
    def is_prefill(self) -> bool:
        """More than one token to compute: a (possibly chunked, possibly recomputed) prefill."""
        return self.num_remaining > 1

    @property
    def max_tokens(self) -> int:
        return self.params.max_tokens if self.params.max_tokens is not None else 1 << 30

    @property
    def job_size(self) -> int:
        """SJF key: prompt plus the most tokens it may still generate."""
        return len(self.prompt_ids) + self.max_tokens


@dataclass
class RequestMetrics:
    """Wall-clock times (time.perf_counter seconds) of one completion.

    定义于 第7章 §7.4.1
    """

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    token_times: list[float]
    finished_time: float | None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)


@dataclass
class CompletionOutput:
    """One finished (or streamed) completion, with vLLM's field names.

    定义于 第7章 §7.4.1
    """
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None
    metrics: RequestMetrics | None = None
    num_preemptions: int = 0
    logprobs: list[dict[int, float]] | None = None   # per token: id -> raw logprob, the sampled id included


@dataclass
class RequestOutput:
    """Everything a request produced, with vLLM's field names.

    定义于 第7章 §7.4.1
    """
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    priority: int = 0

    @property
    def metrics(self) -> RequestMetrics | None:
        return self.outputs[0].metrics if self.outputs else None


def completion_of(seq: Sequence) -> CompletionOutput:
    """The user-facing CompletionOutput of an engine-internal sequence.

    定义于 第7章 §7.4.1
    """
    metrics = RequestMetrics(seq.arrival, seq.first_scheduled, seq.token_times[0] if seq.token_times else None,
                             list(seq.token_times), seq.finished_time)
    return CompletionOutput(seq.index, seq.text, list(seq.output_ids), seq.finish_reason, seq.stop_reason,
                            metrics, seq.num_preemptions,
                            None if seq.logprobs is None else [dict(d) for d in seq.logprobs])
