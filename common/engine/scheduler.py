"""Iteration-level scheduling (chapter 7): every step, decide which sequences run and how many
of their tokens, under a token budget (max_num_batched_tokens), a sequence cap (max_num_seqs)
and the KV blocks the block manager has left.

Order inside a step: running decodes first (one token each), then running chunked prefills,
then new admissions from the waiting queue, each charged only for the tokens the prefix cache
does not already hold. When a running sequence needs a block and none is free, a victim is
preempted by recompute (its blocks freed, its tokens requeued at the front).

After the forward the engine hands the sampled tokens back: `update_computed` then `postprocess`
(append, stop checks, finish), the same calls in the serial loop and under overlap scheduling.

The small pure functions at the top (`policy_key`, `chunk_tokens`, `pick_victim`, `admit`) are
the pieces lab 7 asks readers to write.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import SCHEDULING_POLICIES as POLICIES
from .config import EngineConfig
from .sequence import Sequence, Status
from .stop import StopChecker


def check_policy(policy: str) -> str:
    """Validate a scheduling_policy name, so a typo fails at start-up rather than mid-run.

    定义于 第7章 §7.4.3
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling_policy {policy!r}; use one of {POLICIES}")
    return policy


def policy_key(seq: Sequence, policy: str, now: float = 0.0, aging: float = 0.0) -> tuple:
    """Sort key: smaller runs first. fcfs: arrival; priority: (priority − aging·waited, arrival);
    sjf: (prompt + max_tokens, arrival). `aging` (priority units per second) stops starvation.

    定义于 第7章 §7.4.3
    """
    if policy == "fcfs":
        return (seq.arrival,)
    if policy == "priority":
        return (seq.priority - aging * max(0.0, now - seq.arrival), seq.arrival)
    if policy == "sjf":
        return (seq.job_size, seq.arrival)
    raise ValueError(f"unknown scheduling_policy {policy!r}; use one of {POLICIES}")


def chunk_tokens(num_remaining: int, budget: int, enable_chunked_prefill: bool) -> int:
    """How many of a sequence's remaining tokens fit this step: all of them if the budget allows,
    else the budget (chunked prefill) or nothing (without chunking a prefill runs whole).

    定义于 第7章 §7.4.3
    """
    if num_remaining <= 0 or budget <= 0:
        return 0
    if num_remaining <= budget:
        return num_remaining
    return budget if enable_chunked_prefill else 0


def pick_victim(running: Iterable[Sequence]) -> Sequence:
    """The sequence to preempt: the least urgent (largest priority value), then the latest arrival.

    定义于 第7章 §7.4.3
    """
    running = list(running)
    if not running:
        raise ValueError("no running sequence to preempt")
    return max(running, key=lambda s: (s.priority, s.arrival))


def admit(waiting: list[Sequence], budget: int, free_seq_slots: int, enable_chunked_prefill: bool,
          num_cached: Callable[[Sequence], int],
          try_allocate: Callable[[Sequence], bool]) -> list[tuple[Sequence, int]]:
    """Admit waiting sequences in order while the token budget, the sequence slots and the KV
    blocks last; stop at the first that does not fit (no overtaking, so nothing starves).
    A sequence is charged only for the tokens left after its prefix-cache hits: `num_cached(seq)`
    (fewer than seq.num_tokens). `try_allocate(seq)` reserves the blocks of all the sequence's
    tokens and returns True, or returns False (reserving nothing) when they do not fit. Returns
    (sequence, tokens scheduled this step) pairs.

    定义于 第7章 §7.4.3
    """
    admitted: list[tuple[Sequence, int]] = []
    for seq in waiting:
        if free_seq_slots <= 0 or budget <= 0:
            break
        n = chunk_tokens(seq.num_tokens - num_cached(seq), budget, enable_chunked_prefill)
        if n == 0 or not try_allocate(seq):
            break
        admitted.append((seq, n))
        budget -= n
        free_seq_slots -= 1
    return admitted


@dataclass
class SchedulerOutput:
    """One step's plan: which sequences run with how many tokens, what was preempted, what to copy.

    定义于 第7章 §7.4.3
    """
    scheduled: list[tuple[Sequence, int]]          # decodes first, then prefills
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)   # copy-on-write (src, dst) blocks, apply first
    num_decode: int = 0
    schedule_s: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    """Iteration-level scheduler: decodes first, then chunked prefills, within the token and KV budget.

    定义于 第7章 §7.4.3
    """
    def __init__(self, block_manager, config: EngineConfig, stop_checker: StopChecker) -> None:
        self.bm = block_manager
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.enable_chunked_prefill = config.enable_chunked_prefill
        self.policy = check_policy(config.scheduling_policy)
        self.aging = config.aging
        self.stop_checker = stop_checker
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _key(self, now: float):
        return lambda s: policy_key(s, self.policy, now, self.aging)

    def _preempt(self, seq: Sequence) -> None:
        self.bm.free(seq.seq_id)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def _num_cached(self, seq: Sequence) -> int:
        return self.bm.num_cached_tokens(seq.tokens)

    def _try_allocate(self, seq: Sequence) -> bool:
        if not self.bm.can_allocate(seq.tokens):
            return False
        cached = self.bm.allocate(seq.seq_id, seq.tokens)
        if seq.num_preemptions == 0 and seq.first_scheduled is None:
            seq.num_cached = cached
        seq.num_computed = cached
        return True

    def schedule(self) -> SchedulerOutput:
        t0 = time.perf_counter()
        now = t0
        budget = self.max_num_batched_tokens
        self.running.sort(key=self._key(now))
        decodes = [s for s in self.running if not s.is_prefill]
        prefills = [s for s in self.running if s.is_prefill]
        scheduled: dict[Sequence, int] = {}
        preempted: list[Sequence] = []
        copies: list[tuple[int, int]] = []
        for seq in decodes + prefills:
            if seq.status is not Status.RUNNING or budget <= 0:
                continue
            n = chunk_tokens(seq.num_remaining, budget, self.enable_chunked_prefill)
            if n == 0:
                continue
            grow = max(0, seq.num_computed + n - self.bm.num_tokens(seq.seq_id))
            while not self.bm.can_append(seq.seq_id, grow):
                victim = pick_victim(self.running)
                budget += scheduled.pop(victim, 0)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            if grow:
                copies.extend(self.bm.append_slots(seq.seq_id, seq.num_computed + n))
            scheduled[seq] = n
            budget -= n
        if not preempted:  # vLLM's rule too: no admissions in a step that had to preempt
            if self.policy != "fcfs":
                self.waiting = deque(sorted(self.waiting, key=self._key(now)))
            for seq, n in admit(list(self.waiting), budget, self.max_num_seqs - len(self.running),
                                self.enable_chunked_prefill, self._num_cached, self._try_allocate):
                self.waiting.remove(seq)
                seq.status = Status.RUNNING
                seq.first_scheduled = seq.first_scheduled or now
                self.running.append(seq)
                scheduled[seq] = n
                budget -= n
        order = [s for s in scheduled if not s.is_prefill] + [s for s in scheduled if s.is_prefill]
        return SchedulerOutput([(s, scheduled[s]) for s in order], preempted, copies,
                               num_decode=sum(1 for s in scheduled if not s.is_prefill),
                               schedule_s=time.perf_counter() - t0)

    def update_computed(self, out: SchedulerOutput) -> None:
        """After the step's forward: its tokens' K/V are in the cache. Registers the newly full
        blocks in the prefix cache before any finish frees them (a finished prompt stays cached)."""
        for seq, n in out.scheduled:
            seq.num_computed += n
            if seq.status is Status.RUNNING:
                self.bm.mark_computed(seq.seq_id, seq.tokens, seq.num_computed)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int],
                    logprobs: list[dict[int, float] | None] | None = None) -> list[Sequence]:
        """Append each sequence's sampled token (and its logprobs), check its stops, finish the
        done ones and free their blocks. Returns the sequences that finished."""
        now = time.perf_counter()
        finished = []
        for i, (seq, token) in enumerate(zip(seqs, token_ids, strict=True)):
            seq.append_token(token, now, logprobs[i] if logprobs is not None else None)
            if self.stop_checker.check(seq):
                seq.finished_time = now
                self.finish(seq)
                finished.append(seq)
        return finished

    def finish(self, seq: Sequence) -> None:
        """Retire a sequence, running or waiting (e.g. preempted while its last token was computed
        under overlap scheduling), and free its KV blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self.bm.has_seq(seq.seq_id):
            self.bm.free(seq.seq_id)
        seq.status = Status.FINISHED

    def abort(self, seq: Sequence) -> None:
        """Drop a waiting or running sequence (client gone) and free its KV blocks."""
        self.finish(seq)
        seq.finish_reason = seq.finish_reason or "abort"
