"""`AsyncEngine`: the engine behind an asyncio API, so every HTTP client shares one continuous
batch and no handler ever blocks the event loop.

The LLM is owned by one `EngineLoop` (common.serve.engine_loop) that runs in a process of its own
(`ProcessCore`, what `python -m common.serve` uses, as vLLM V1's EngineCore) or in a thread of this
process (`ThreadCore`, for tests and in-process apps; pass an `LLM`). Handlers never touch the LLM:
`submit` sends an "add" command and awaits the loop's "accepted"; every step's message hands each
request its new tokens through the request's asyncio queue, and the snapshot /health and /metrics
read. The metrics are fed here, on the event loop, from those messages.

(The book's handlers call a synchronous `generate()` inside `async def`: the whole server then
serves one request at a time. That is the bug this class exists to avoid.)
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Callable

from ..engine import LLM, SamplingParams
from .engine_core import ProcessCore, ThreadCore
from .engine_loop import Snapshot, TokenEvent
from .metrics import EngineMetrics

log = logging.getLogger("common.serve")
__all__ = ["AsyncEngine", "ClientGone", "EngineDead", "RequestStream", "Snapshot", "TokenEvent"]


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

    def release(self) -> None:
        """Leave the engine's in-flight count once (finished in the engine, failed or aborted), so
        --max-queue counts the work the engine still has, not clients slow to read their streams."""
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
            self.release()
            raise item
        for ev in item:
            self.num_generated += len(ev.token_ids)
            if ev.finish_reason is not None:
                self.finished.add(ev.index)
        if self.done:
            self.release()
        return item

    def abort(self) -> None:
        """Cancel the request; a consumer waiting for events gets ClientGone."""
        if not self.done:
            self.engine.abort(self.request_id)
            self.finished = set(range(self.n))
            self.queue.put_nowait(ClientGone(self.request_id))
        self.release()

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


class AsyncEngine:
    """The engine's asyncio side, shared by every HTTP request; see the module docstring.

    定义于 第10章 §10.2
    """

    def __init__(self, core: LLM | ThreadCore | ProcessCore, metrics: EngineMetrics | None = None,
                 on_crash: Callable[[BaseException], None] | None = None, fail_at_step: int | None = None,
                 idle_wait_s: float = 0.5) -> None:
        """`core`: an LLM (run by a ThreadCore here) or a started core. `on_crash(error)` runs on the event
        loop after the loop failed and every in-flight request got its error (the server uses it to exit);
        `fail_at_step=N` (with an LLM) makes the N-th step raise InjectedFault."""
        if not isinstance(core, LLM) and (fail_at_step is not None or idle_wait_s != 0.5):
            raise ValueError("fail_at_step and idle_wait_s configure the thread core built from an LLM; "
                             "a ready core was configured when it was made")
        self.core = ThreadCore(core, fail_at_step, idle_wait_s) if isinstance(core, LLM) else core
        self.tokenizer, self.max_model_len, self.vocab_size = (self.core.tokenizer, self.core.max_model_len,
                                                                self.core.vocab_size)
        self.metrics, self.on_crash = metrics, on_crash
        self.snapshot = Snapshot()
        self.num_inflight = 0                       # accepted, not finished
        self._pending: dict[str, tuple[asyncio.Future, RequestStream]] = {}
        self._streams: dict[str, list] = {}         # request id -> [stream, completions not finished]
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = self._dead = False

    @classmethod
    def spawn(cls, model: str, config, metrics: EngineMetrics | None = None,
              on_crash: Callable[[BaseException], None] | None = None, fail_at_step: int | None = None,
              log_level: str = "warning") -> "AsyncEngine":
        """The engine in its own process (loads `model` there; returns once it is ready)."""
        return cls(ProcessCore(model, config, fail_at_step, log_level), metrics, on_crash)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.core.start(self._post_message)

    @property
    def alive(self) -> bool:
        return self._loop is not None and self.core.running and not (self._stopping or self._dead)

    async def stop(self, timeout_s: float = 30) -> None:
        """Cancel what is left, stop the loop and wait for it (without blocking the event loop)."""
        self._stopping = True
        self.core.send(("stop",))
        await asyncio.to_thread(self.core.join, timeout_s)

    # ---- requests ---------------------------------------------------------------------------
    async def submit(self, prompt_ids: list[int], params: SamplingParams,
                     arrival: float | None = None) -> RequestStream:
        """Queue a request; returns once the engine accepted it (ValueError if it refused). `arrival`
        (time.perf_counter(), one clock for all processes on Linux) is when the server received it: TTFT,
        queue time and e2e latency count from there, as vLLM's do (default: now)."""
        if not self.alive:
            raise EngineDead("the engine is not running")
        stream = RequestStream(self, f"req-{next(self._ids)}", params.n, len(prompt_ids))
        accepted = self._loop.create_future()
        self._pending[stream.request_id] = (accepted, stream)
        self.num_inflight += 1
        arrival = time.perf_counter() if arrival is None else arrival
        self.core.send(("add", stream.request_id, prompt_ids, params, arrival))
        try:
            await accepted
        except BaseException:
            self.num_inflight -= 1
            if self._pending.pop(stream.request_id, None) is not None:   # cancelled before the answer
                self.abort(stream.request_id)
            raise
        return stream

    def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self.core.send(("abort", request_id))

    # ---- messages from the loop (any thread -> the event loop) ------------------------------
    def _post_message(self, message: tuple) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_message, message)
        except RuntimeError:                # the event loop is closed: nobody is left to tell
            pass

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "step":
            self._on_step(*message[1:])
        elif kind == "accepted":
            self._on_accepted(*message[1:])
        elif kind == "dead":
            self._on_dead(*message[1:])

    def _on_accepted(self, request_id: str, error: tuple[str, str] | None) -> None:
        future, stream = self._pending.pop(request_id, (None, None))
        if future is None or future.done():             # the submitter gave up meanwhile
            if error is None:
                self.core.send(("abort", request_id))
            return
        if error is not None:
            kind, text = error
            future.set_exception(ValueError(text) if kind == "ValueError" else EngineDead(text))
            return
        self._streams[request_id] = [stream, stream.n]  # before the first tokens can arrive
        if self.metrics:
            self.metrics.on_add(stream.num_prompt_tokens)
        future.set_result(None)

    def _on_step(self, batch: list[tuple[str, list[TokenEvent]]], aborted: list[tuple[str, int]],
                 snapshot: Snapshot) -> None:
        for request_id, events in batch:
            finished = [ev for ev in events if ev.finish_reason is not None]
            if self.metrics:
                self.metrics.on_tokens(sum(len(ev.token_ids) for ev in events))
                for ev in finished:
                    self.metrics.on_finish(ev.stats)
            entry = self._streams.get(request_id)
            if entry is None:                           # aborted here, not yet there
                continue
            entry[0].queue.put_nowait(events)
            entry[1] -= len(finished)
            if entry[1] <= 0:                           # its engine work is over: it leaves the queue
                del self._streams[request_id]           # even if its client has not read the events yet
                entry[0].release()
        if self.metrics:
            for _, num in aborted:
                self.metrics.on_abort(num)
            self.metrics.on_step(snapshot)
        self.snapshot = snapshot

    def _on_dead(self, crashed: bool, message: str) -> None:
        self._dead = True
        dead = EngineDead(message, crashed=crashed)
        for stream, _ in self._streams.values():
            stream.queue.put_nowait(dead)
        self._streams.clear()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(dead)
        self._pending.clear()
        if crashed:
            log.error("%s", message)
            if self.on_crash is not None:               # after the errors above: clients hear first
                self.on_crash(dead)

