"""Where the server's `EngineLoop` runs: a thread of the server process, or a process of its own.

Why a process: in one process the engine's Python work (schedule, prepare, sample, every op's
dispatch) and the event loop's (HTTP, JSON, detokenizing, SSE) take turns on one GIL. While the
event loop holds it, the model step waits, so each token of every request gets slower as traffic
grows. vLLM V1 runs its EngineCore in a separate process for the same reason. `ProcessCore` spawns
the engine process (spawn, not fork: OpenMP and CUDA do not survive a fork), which loads the model
and sends "ready"; commands go down one pipe (written by a sender thread, so the event loop never
blocks on a full pipe) and the loop's messages come back up it (read by a reader thread).

`ThreadCore` keeps everything in one process: tests build apps in-process on a `tiny` model, and a
notebook can compare the two designs on the same workload.

Both cores: `start(on_message)` (called from any thread), `send(command)`, `join(timeout)`, `running`,
and `tokenizer`, `max_model_len`, `vocab_size` for request validation.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from collections import deque
from typing import Any, Callable

from ..engine import LLM, EngineConfig, SamplingParams
from .engine_loop import EngineLoop

log = logging.getLogger("common.serve")
OnMessage = Callable[[tuple], None]


class ThreadCore:
    """The loop in a daemon thread of this process; commands through a deque and an Event.

    定义于 第10章 §10.2
    """

    def __init__(self, llm: LLM, fail_at_step: int | None = None, idle_wait_s: float = 0.5) -> None:
        if llm.tokenizer is None:
            raise ValueError("the server needs an LLM with a tokenizer")
        self.llm, self.fail_at_step, self.idle_wait_s = llm, fail_at_step, idle_wait_s
        self.tokenizer, self.max_model_len, self.vocab_size = llm.tokenizer, llm.max_model_len, llm.config.vocab_size
        self._commands: deque[tuple] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_message: OnMessage) -> None:
        loop = EngineLoop(self.llm, on_message, self.fail_at_step, self.idle_wait_s)
        self._thread = threading.Thread(target=loop.run, args=(self._poll,), name="engine-loop", daemon=True)
        self._thread.start()

    def send(self, command: tuple) -> None:
        self._commands.append(command)     # deque.append is atomic; the loop pops
        self._wake.set()

    def _poll(self, timeout: float) -> list[tuple]:
        if not self._commands and timeout > 0:
            self._wake.wait(timeout)
        self._wake.clear()
        out = []
        while self._commands:
            out.append(self._commands.popleft())
        return out

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def warm_up(llm: LLM) -> LLM:
    """One tiny request so the first client does not pay for lazy initialisation; then clean counters.

    定义于 第10章 §10.2
    """
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
    llm.reset_stats()
    return llm


def run_engine_core(conn: Any, model: str, config: EngineConfig, fail_at_step: int | None, log_level: str) -> None:
    """The engine process: load and warm up the LLM, say "ready", run the loop over the pipe.

    定义于 第10章 §10.2
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s engine-core %(levelname)s %(message)s")
    try:
        llm = warm_up(LLM(model, config=config))
    except BaseException as e:                  # the API process reports it and exits
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", {"max_model_len": llm.max_model_len, "vocab_size": llm.config.vocab_size}))

    def poll(timeout: float) -> list[tuple]:
        out = []
        if conn.poll(timeout):                  # EOFError here (the server died) ends the loop and the process
            out.append(conn.recv())
            while conn.poll(0):
                out.append(conn.recv())
        return out

    EngineLoop(llm, conn.send, fail_at_step).run(poll)
    conn.close()


class ProcessCore:
    """The loop in a spawned engine process; see the module docstring.

    定义于 第10章 §10.2
    """

    def __init__(self, model: str, config: EngineConfig, fail_at_step: int | None = None,
                 log_level: str = "warning", startup_timeout_s: float = 600) -> None:
        from ..models import load_tokenizer

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=run_engine_core, args=(child, model, config, fail_at_step, log_level),
                                   name="engine-core", daemon=True)
        self.process.start()
        child.close()
        info = self._wait_ready(startup_timeout_s)
        self.max_model_len, self.vocab_size = info["max_model_len"], info["vocab_size"]
        self.tokenizer = load_tokenizer(model)
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._stop_requested = False

    def _wait_ready(self, timeout_s: float) -> dict:
        try:
            if not self._conn.poll(timeout_s):
                raise RuntimeError(f"the engine process did not start within {timeout_s:.0f} s")
            kind, detail = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the engine process exited during start (exit code {self.process.exitcode})") from None
        except BaseException:
            self.process.kill()
            raise
        if kind != "ready":
            self.process.join(5)
            raise RuntimeError(f"the engine process failed to start: {detail}")
        return detail

    def start(self, on_message: OnMessage) -> None:
        threading.Thread(target=self._read, args=(on_message,), name="engine-core-reader", daemon=True).start()
        threading.Thread(target=self._write, name="engine-core-writer", daemon=True).start()

    def send(self, command: tuple) -> None:
        if command[0] == "stop":
            self._stop_requested = True
        self._outbox.put(command)

    def _write(self) -> None:
        while (command := self._outbox.get()) is not None:
            try:
                self._conn.send(command)
            except (BrokenPipeError, OSError):      # the engine process is gone: the reader reports it
                return

    def _read(self, on_message: OnMessage) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self.process.join(5)
                code = self.process.exitcode
                on_message(("dead", not self._stop_requested, f"the engine process exited (exit code {code})"))
                break
            on_message(message)
            if message[0] == "dead":
                break
        self._outbox.put(None)

    @property
    def running(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("the engine process did not stop within %.0f s: killing it", timeout)
            self.process.kill()
            self.process.join(5)
