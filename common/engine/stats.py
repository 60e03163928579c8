"""Per-step statistics: what each iteration ran, how full the KV pool was, and where the time went.
Notebooks plot these; the chapter 10 server exports them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepStats:
    """What one engine step ran, how full the KV pool was and where its time went.

    定义于 第7章 §7.3
    """
    step: int
    start: float                 # perf_counter at the start of the step
    num_decode: int              # sequences decoding one token
    num_prefill: int             # sequences running a (chunk of a) prefill
    num_prefill_tokens: int
    num_running: int             # after the step
    num_waiting: int
    kv_usage: float              # fraction of KV blocks in use after the step
    num_preempted: int
    num_sampled: int
    schedule_s: float            # CPU: scheduling
    prepare_s: float             # CPU: building the batch tensors
    forward_s: float             # model forward (+ LM head + sampling under overlap scheduling)
    sample_s: float              # sampling + bookkeeping (serial); bookkeeping only (overlap)
    seq_ids: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return self.num_decode + self.num_prefill_tokens

    @property
    def duration_s(self) -> float:
        return self.schedule_s + self.prepare_s + self.forward_s + self.sample_s
