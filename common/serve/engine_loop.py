"""`EngineLoop`: the one owner of an `LLM` in a server. It applies the commands the API side sent
(add / abort / stop) between steps, runs `LLM.step()`, and emits one message per step with every
request's new tokens and a snapshot for /health and /metrics.

The loop does not know where it runs. `AsyncEngine` runs it in a thread of the server process
(`engine_core="thread"`) or in a child process of its own (`engine_core="process"`, the server's
default, as vLLM V1's EngineCore): it only needs `poll(timeout)` for commands and `emit(message)`.
Everything it emits is plain picklable data, never a `Sequence` or a tensor.

Commands (API side -> loop):
  ("add", request_id, prompt_ids, SamplingParams, arrival) | ("abort", request_id) | ("stop",)
Messages (loop -> API side):
  ("accepted", request_id, None | (error_type, message))   an add was applied or refused
  ("step", [(request_id, [TokenEvent, ...]), ...], [(request_id, aborted completions), ...], Snapshot)
  ("dead", crashed, message)                               the last message: the loop ended
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ..engine import LLM
from ..engine.sequence import Sequence, Status

log = logging.getLogger("common.serve")
MAX_KEPT_STATS = 10_000
Poll = Callable[[float], list[tuple]]
Emit = Callable[[tuple], None]


@dataclass
class FinishedStats:
    """What the latency histograms need of a finished completion, read where its Sequence lives
    (time.perf_counter is system-wide on Linux, and only differences within one request are used).

    定义于 第10章 §10.2
    """

    finish_reason: str | None
    arrival: float
    token_times: list[float]
    first_scheduled: float | None
    finished_time: float | None

    @classmethod
    def of(cls, seq: Sequence) -> "FinishedStats":
        return cls(seq.finish_reason, seq.arrival, list(seq.token_times), seq.first_scheduled, seq.finished_time)


@dataclass
class TokenEvent:
    """New tokens of one of a request's n completions; finish_reason (and stats) set on its last event.

    定义于 第10章 §10.2
    """

    index: int
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None     # per token (SamplingParams.logprobs set): id -> logprob
    stats: FinishedStats | None = None


@dataclass
class Snapshot:
    """What /metrics and /health read, published after every step. The counters are cumulative.

    定义于 第10章 §10.2
    """

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    steps: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_preemptions: int = 0


class InjectedFault(RuntimeError):
    """Raised by step `fail_at_step` (fault-injection tests only).

    定义于 第10章 §10.2
    """


class EngineLoop:
    """Drive one LLM from commands to per-step token messages; see the module docstring.

    定义于 第10章 §10.2
    """

    def __init__(self, llm: LLM, emit: Emit, fail_at_step: int | None = None, idle_wait_s: float = 0.5) -> None:
        self.llm, self.emit = llm, emit
        self.fail_at_step, self.idle_wait_s = fail_at_step, idle_wait_s
        self.num_steps = 0
        self.stopping = False
        self._live: dict[str, tuple[list[Sequence], list[int | None]]] = {}   # request -> seqs, tokens sent
        self._aborted: list[tuple[str, int]] = []      # (request, completions not finished) since the last message

    def run(self, poll: Poll) -> None:
        """Until a stop command (or an error): commands, one step, its message. Ends with ("dead", ...)."""
        error: BaseException | None = None
        try:
            while not self.stopping:
                busy = self.llm.has_unfinished_requests()
                applied = self._apply(poll(0.0 if busy else self.idle_wait_s))
                if not self.llm.has_unfinished_requests():
                    if applied:
                        self.emit(("step", [], self._drain_aborts(), self.snapshot()))
                    continue
                self.num_steps += 1
                if self.num_steps == self.fail_at_step:
                    raise InjectedFault(f"fault injected at engine step {self.num_steps}")
                self.llm.step()
                self.emit(("step", self._new_tokens(), self._drain_aborts(), self.snapshot()))
        except BaseException as e:      # a crashed step must not leave clients hanging forever
            log.exception("engine loop crashed")
            error = e
        finally:
            self._abort_all()
            message = (f"the engine failed ({type(error).__name__}: {error}); the server restarts"
                       if error is not None else "the server is shutting down")
            self.emit(("dead", error is not None, message))

    def _apply(self, commands: list[tuple]) -> bool:
        for command in commands:
            kind = command[0]
            if kind == "add":
                self._add(*command[1:])
            elif kind == "abort":
                live = self._live.pop(command[1], None)
                if live is not None:
                    self.llm.abort(command[1])
                    self._aborted.append((command[1], sum(sent is not None for sent in live[1])))
            elif kind == "stop":
                self.stopping = True
            else:
                raise ValueError(f"unknown engine command {kind!r}")
        return bool(commands)

    def _add(self, request_id: str, prompt_ids: list[int], params, arrival: float) -> None:
        if self.stopping:
            self.emit(("accepted", request_id, ("EngineDead", "the server is shutting down")))
            return
        try:
            self.llm.add_request(prompt_ids, params, request_id=request_id, arrival=arrival)
        except ValueError as e:
            self.emit(("accepted", request_id, ("ValueError", str(e))))
            return
        seqs = self.llm.sequences(request_id)
        self._live[request_id] = (seqs, [0] * len(seqs))
        self.emit(("accepted", request_id, None))

    def _drain_aborts(self) -> list[tuple[str, int]]:
        aborted, self._aborted = self._aborted, []
        return aborted

    def _new_tokens(self) -> list[tuple[str, list[TokenEvent]]]:
        batch = []
        for rid, (seqs, sent) in list(self._live.items()):
            events = []
            for i, seq in enumerate(seqs):
                if sent[i] is None:                  # finish already reported (n > 1)
                    continue
                new = seq.output_ids[sent[i]:]
                finished = seq.status is Status.FINISHED
                if not new and not finished:
                    continue
                ev = TokenEvent(seq.index, list(new))
                if seq.logprobs is not None:
                    ev.logprobs = [dict(d) for d in seq.logprobs[sent[i]:sent[i] + len(new)]]
                sent[i] = len(seq.output_ids)
                if finished:
                    ev.finish_reason, ev.stop_reason = seq.finish_reason, seq.stop_reason
                    ev.stats = FinishedStats.of(seq)
                    sent[i] = None
                events.append(ev)
            if events:
                batch.append((rid, events))
            if all(s is None for s in sent):
                del self._live[rid]
                self.llm.abort(rid)      # forgets the finished request's bookkeeping (nothing to free)
        if len(self.llm.stats) > MAX_KEPT_STATS:   # a server runs for days: keep the recent steps only
            del self.llm.stats[:-MAX_KEPT_STATS // 2]
        return batch

    def snapshot(self) -> Snapshot:
        llm = self.llm
        cache = llm.block_manager.stats
        return Snapshot(len(llm.scheduler.running), len(llm.scheduler.waiting), llm.block_manager.usage,
                        self.num_steps, cache.queries, cache.hits, llm.scheduler.num_preemptions)

    def _abort_all(self) -> None:
        for rid in list(self._live):
            try:
                self.llm.abort(rid)
            except Exception:                       # the LLM may be broken: the clients still get their error
                log.exception("abort after a crash failed")
        self._live.clear()
