"""`AsyncEngine`: the offline `LLM` behind an asyncio API, so every HTTP client shares one
continuous batch and no handler ever blocks the event loop.

One background thread owns the LLM: it applies the commands handlers posted (add / abort) between
steps, runs `LLM.step()` (torch releases the GIL during the forward, so the event loop keeps
serving), and hands each request its new tokens through the request's asyncio queue with
`loop.call_soon_threadsafe`. The LLM is only ever touched by that thread: handlers talk to it
through the command queue, and read a snapshot the thread publishes after every step.

(The book's handlers call a synchronous `generate()` inside `async def`: the whole server then
serves one request at a time. That is the bug this class exists to avoid.)
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..engine import LLM, SamplingParams
from ..engine.sequence import Sequence, Status
from .metrics import EngineMetrics

log = logging.getLogger("common.serve")
MAX_KEPT_STATS = 10_000


@dataclass
class TokenEvent:
    """New tokens of one of a request's n completions; finish_reason is set on its last event.

    定义于 第10章 §10.2
    """

    index: int
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None     # per token (SamplingParams.logprobs set): id -> logprob


@dataclass
class Snapshot:
    """What /metrics and /health read, published by the engine thread.

    定义于 第10章 §10.2
    """

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    steps: int = 0


class RequestStream:
    """The handler's side of one request: `async for events in stream` yields lists of TokenEvent
    until all n completions finished; `abort()` (also on exit of `async with`) cancels it.

    定义于 第10章 §10.2
    """

    def __init__(self, engine: "AsyncEngine", request_id: str, n: int, num_prompt_tokens: int):
        self.engine, self.request_id, self.n = engine, request_id, n
        self.num_prompt_tokens = num_prompt_tokens
        self.queue: asyncio.Queue[list[TokenEvent] | BaseException] = asyncio.Queue()
        self.finished: set[int] = set()
        self.num_generated = 0
        self._released = False

    def _release(self) -> None:
        """Leave the engine's in-flight count once (finished, failed or aborted)."""
        if not self._released:
            self._released = True
            self.engine.num_inflight -= 1

    @property
    def done(self) -> bool:
        return len(self.finished) == self.n

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> list[TokenEvent]:
        if self.done:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, BaseException):
            self.finished = set(range(self.n))
            self._release()
            raise item
        for ev in item:
            self.num_generated += len(ev.token_ids)
            if ev.finish_reason is not None:
                self.finished.add(ev.index)
        if self.done:
            self._release()
        return item

    def abort(self) -> None:
        """Cancel the request; a consumer waiting for events gets ClientGone."""
        if not self.done:
            self.engine.abort(self.request_id)
            self.finished = set(range(self.n))
            self.queue.put_nowait(ClientGone(self.request_id))
        self._release()

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.abort()


class ClientGone(Exception):
    """The request was aborted (its client disconnected) while someone waited for its events.

    定义于 第10章 §10.2
    """


class EngineDead(RuntimeError):
    """The engine thread stopped: `crashed` (a step raised: in-flight requests get 500 and the
    server exits non-zero, as vLLM does) or a shutdown (503).

    定义于 第10章 §10.2
    """

    def __init__(self, message: str, crashed: bool = False):
        super().__init__(message)
        self.crashed = crashed


class InjectedFault(RuntimeError):
    """Raised by step `fail_at_step` (fault-injection tests only).

    定义于 第10章 §10.2
    """


class AsyncEngine:
    """The offline LLM driven by one background step loop, shared by every HTTP request.

    定义于 第10章 §10.2
    """
    def __init__(self, llm: LLM, metrics: EngineMetrics | None = None, idle_wait_s: float = 0.5,
                 fail_at_step: int | None = None, on_crash: Callable[[BaseException], None] | None = None):
        """`on_crash(error)` runs on the event loop after a step raised and every in-flight request got
        its error (the server uses it to exit); `fail_at_step=N` makes the N-th step raise InjectedFault."""
        self.llm = llm
        self.fail_at_step = fail_at_step
        self.on_crash = on_crash
        self.num_steps = 0
        self.metrics = metrics
        self.snapshot = Snapshot()
        self.num_inflight = 0                       # accepted, not finished (event-loop side)
        self.idle_wait_s = idle_wait_s
        self._commands: deque = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: dict[str, tuple[RequestStream, list[Sequence], list[int | None]]] = {}
        self._ids = itertools.count()
        self.error: BaseException | None = None

    # ---- lifecycle (event loop side) --------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    async def stop(self, timeout_s: float = 30) -> None:
        """Cancel what is left, stop the thread and wait for it (without blocking the loop)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)

    # ---- requests (event loop side) ---------------------------------------------------------
    async def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestStream:
        """Queue a request; returns once the engine accepted it (ValueError if it refused)."""
        if not self.alive:
            raise EngineDead("the engine is not running")
        stream = RequestStream(self, f"req-{next(self._ids)}", params.n, len(prompt_ids))
        accepted = self._loop.create_future()
        self.num_inflight += 1
        self._post(("add", stream, prompt_ids, params, accepted))
        try:
            await accepted
        except BaseException:
            self.num_inflight -= 1
            if not accepted.done() or accepted.cancelled():
                self._post(("abort", stream.request_id))
            raise
        return stream

    def abort(self, request_id: str) -> None:
        self._post(("abort", request_id))

    def _post(self, command: tuple) -> None:
        self._commands.append(command)   # deque.append is atomic; the engine thread pops
        self._wake.set()

    def _resolve(self, future: asyncio.Future, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                if not self.llm.has_unfinished_requests():
                    self._publish_snapshot()
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
                    continue
                self.num_steps += 1
                if self.num_steps == self.fail_at_step:
                    raise InjectedFault(f"fault injected at engine step {self.num_steps}")
                self.llm.step()
                self._publish_tokens()
                self._publish_snapshot()
        except BaseException as e:      # a crashed step must not leave clients hanging forever
            log.exception("engine loop crashed")
            self.error = e
        finally:
            self._stopping = True
            self._apply_commands()
            crashed = self.error is not None
            dead = EngineDead(f"the engine failed ({type(self.error).__name__}: {self.error}); the server restarts"
                              if crashed else "the server is shutting down", crashed=crashed)
            for rid, (stream, _, _) in list(self._live.items()):
                try:
                    self.llm.abort(rid)
                except Exception:                       # the LLM may be broken: the clients still get their error
                    log.exception("abort after a crash failed")
                self._loop.call_soon_threadsafe(stream.queue.put_nowait, dead)
            self._live.clear()
            try:
                self._publish_snapshot()
            except Exception:
                log.exception("snapshot after a crash failed")
            if crashed and self.on_crash is not None:   # queued after the errors above: clients hear first
                self._loop.call_soon_threadsafe(self.on_crash, self.error)

    def _apply_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            if command[0] == "add":
                _, stream, ids, params, accepted = command
                if self._stopping:
                    self._loop.call_soon_threadsafe(self._resolve, accepted, EngineDead("the server is shutting down"))
                    continue
                try:
                    self.llm.add_request(ids, params, request_id=stream.request_id)
                except ValueError as e:
                    self._loop.call_soon_threadsafe(self._resolve, accepted, e)
                    continue
                seqs = self.llm.sequences(stream.request_id)
                self._live[stream.request_id] = (stream, seqs, [0] * len(seqs))
                if self.metrics:
                    self.metrics.on_add(len(ids))
                self._loop.call_soon_threadsafe(self._resolve, accepted, None)
            else:
                _, rid = command
                live = self._live.pop(rid, None)
                if live is not None:
                    self.llm.abort(rid)
                    if self.metrics:
                        self.metrics.on_abort(sum(sent is not None for sent in live[2]))

    @staticmethod
    def _dispatch(batch: list[tuple[RequestStream, list[TokenEvent]]]) -> None:
        """Runs on the event loop: one wake-up per step for all requests, not one per request."""
        for stream, events in batch:
            stream.queue.put_nowait(events)

    def _publish_tokens(self) -> None:
        batch = []
        for rid, (stream, seqs, sent) in list(self._live.items()):
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
                    sent[i] = None
                    if self.metrics:
                        self.metrics.on_finish(seq)
                events.append(ev)
            if self.metrics:
                self.metrics.on_tokens(sum(len(e.token_ids) for e in events))
            if events:
                batch.append((stream, events))
            if all(s is None for s in sent):
                del self._live[rid]
                self.llm.abort(rid)      # forgets the finished request's bookkeeping (nothing to free)
        if batch:
            self._loop.call_soon_threadsafe(self._dispatch, batch)
        if len(self.llm.stats) > MAX_KEPT_STATS:   # a server runs for days: keep the recent steps only
            del self.llm.stats[:-MAX_KEPT_STATS // 2]

    def _publish_snapshot(self) -> None:
        llm = self.llm
        self.snapshot = Snapshot(len(llm.scheduler.running), len(llm.scheduler.waiting),
                                 llm.block_manager.usage, len(llm.stats))
        if self.metrics:
            self.metrics.on_step(self.snapshot, llm)
