"""Chaos run: steady streaming load through the router while one replica is killed and later restarted.

    with ServerProcess("tiny", dtype="float32", env={"OMP_NUM_THREADS": "1"}) as a, ServerProcess(...) as b:
        report = run_chaos([a, b], a.model_name)
        print(report.summary())

`concurrency` clients send streamed completions back to back. At `kill_at_s` replica `victim` gets
SIGKILL (its whole process group, as a crash or the OOM killer would); `down_s` later it is started
again on the same port; the load goes on until `after_restart_s` after it answered /health again.
Every request is classified from what the client saw:
- ok: [DONE] and no error;
- failed before the first byte: an error status or a dropped connection with no event; the router's
  retries must bring this to 0;
- cut mid-stream with an error event (an OpenAI error object, then [DONE]): the replica died while
  streaming; the router cannot retry (the client already has part of the answer) but must say so;
- cut without an error event: a silently truncated answer, which must never happen.
From the router's logs (/router/events): when the victim was ejected and readmitted, and how many
requests were dispatched to it while ejected (must be 0) and after its readmission (must be > 0).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import aiohttp

from ..bench.serve import run_sync
from ..peers.process import ManagedServer
from .experiment import WORDS, RouterServer

KINDS = ("ok", "failed_before_first_byte", "cut_with_error_event", "cut_without_error_event")


@dataclass
class StreamOutcome:
    """What one client saw of one streamed request.

    定义于 第10章 §10.9
    """

    start: float
    end: float
    status: int | None = None
    events: int = 0                  # data events before the end (tokens)
    error_event: bool = False
    done: bool = False
    replica: int | None = None       # X-Routed-To
    exception: str | None = None

    @property
    def kind(self) -> str:
        if self.status == 200 and self.done and not self.error_event:
            return "ok"
        if self.error_event and self.done:
            return "cut_with_error_event"
        if self.events == 0 and not self.error_event:
            return "failed_before_first_byte"
        return "cut_without_error_event"


@dataclass
class ChaosReport:
    """What a chaos run saw: outcome counts, when the replica died and came back.

    定义于 第10章 §10.9
    """
    counts: dict[str, int]
    duration_s: float
    victim: int
    killed_at: float
    relaunched_at: float                     # the victim's process started again
    restarted_at: float                      # ... and its /health answered (as the launcher saw it)
    ejected_at: float | None
    readmitted_at: float | None
    dispatched_while_ejected: int
    dispatched_before_ejection: int          # between the kill and the ejection (each retried or cut)
    dispatched_after_readmission: int
    router_stats: dict
    outcomes: list[StreamOutcome] = field(repr=False, default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    @property
    def lost(self) -> int:
        """Requests that ended without an answer and without an error the client could act on."""
        return self.counts["failed_before_first_byte"] + self.counts["cut_without_error_event"]

    def summary(self) -> str:
        ej = "never" if self.ejected_at is None else f"{self.ejected_at - self.killed_at:.2f} s after the kill"
        re = ("never" if self.readmitted_at is None
              else f"{self.readmitted_at - self.relaunched_at:.2f} s after its relaunch (startup included)")
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (f"{self.requests} requests in {self.duration_s:.1f} s: {counts}\n"
                f"replica {self.victim}: ejected {ej}, readmitted {re}; dispatched to it before the ejection "
                f"{self.dispatched_before_ejection}, while ejected {self.dispatched_while_ejected}, after readmission "
                f"{self.dispatched_after_readmission}; router retries {self.router_stats['retries']}")


async def _stream(session: aiohttp.ClientSession, url: str, body: dict) -> StreamOutcome:
    out = StreamOutcome(start=time.time(), end=0.0)
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            out.status = resp.status
            routed = resp.headers.get("X-Routed-To")
            out.replica = int(routed) if routed is not None else None
            if resp.status != 200:
                await resp.read()
                return out
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    data = event.removeprefix(b"data: ")
                    if data == b"[DONE]":
                        out.done = True
                    elif b'"error"' in data and "error" in json.loads(data):
                        out.error_event = True
                    elif not out.done:
                        out.events += 1
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        out.exception = f"{type(exc).__name__}: {exc}"
    finally:
        out.end = time.time()
    return out


def kill(server: ManagedServer) -> None:
    """SIGKILL the server's process group (no drain, no goodbye: a crash) and reap it.

    定义于 第10章 §10.9
    """
    if server.proc is None:
        raise ValueError(f"{server.name} is not running")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    server.proc = None


async def _chaos(router_url: str, model: str, victim: ManagedServer, concurrency: int, max_tokens: int,
                 kill_at_s: float, down_s: float, after_restart_s: float, seed: int) -> tuple[list, dict]:
    rng = random.Random(seed)
    outcomes: list[StreamOutcome] = []
    times: dict[str, float] = {}
    stop = asyncio.Event()

    async def client(c: int, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                    "ignore_eos": True, "stream": True, "user": f"client-{c}"}
            outcomes.append(await _stream(session, router_url, body))

    async def faults() -> None:
        await asyncio.sleep(kill_at_s)
        times["killed"] = time.time()
        await asyncio.to_thread(kill, victim)
        await asyncio.sleep(down_s)
        times["restart_begin"] = time.time()
        await asyncio.to_thread(victim.start)        # returns once /health answers 200
        times["restarted"] = time.time()
        await asyncio.sleep(after_restart_s)
        stop.set()

    timeout = aiohttp.ClientTimeout(total=120, sock_connect=5, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.time()
        await asyncio.gather(faults(), *(client(c, session) for c in range(concurrency)))
        times["start"], times["end"] = t0, time.time()
        async with session.get(router_url + "/router/stats") as r:
            stats = await r.json()
        async with session.get(router_url + "/router/events") as r:
            events = await r.json()
    return outcomes, {"times": times, "stats": stats, "events": events}


def _intervals(health_events: list[dict], replica: int, end: float) -> list[tuple[float, float]]:
    """[ejected, readmitted) intervals of one replica (an open one ends at `end`)."""
    out, since = [], None
    for e in health_events:
        if e["replica"] != replica:
            continue
        if e["event"] == "eject" and since is None:
            since = e["t"]
        elif e["event"] == "readmit" and since is not None:
            out.append((since, e["t"]))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def run_chaos(replicas: Sequence[ManagedServer], model: str, victim: int = 1, policy: str = "least_loaded",
              concurrency: int = 4, max_tokens: int = 24, kill_at_s: float = 2.0, down_s: float = 1.5,
              after_restart_s: float = 2.5, health_interval_s: float = 0.25, seed: int = 0,
              log_dir: str | Path | None = None) -> ChaosReport:
    """Route steady load over `replicas` (started, e.g. common.serve.launch.ServerProcess), kill replica
    `victim` and restart it; see the module docstring for what is counted.

    定义于 第10章 §10.9
    """
    if not 0 <= victim < len(replicas) or len(replicas) < 2:
        raise ValueError(f"need >= 2 replicas and a victim index among them, got {len(replicas)} and {victim}")
    urls = [r.base_url for r in replicas]
    with RouterServer(urls, policy, log_dir=log_dir, health_interval=health_interval_s, health_timeout=1.0,
                      unhealthy_after=2, healthy_after=2, read_timeout=30) as router:
        outcomes, info = run_sync(_chaos(router.base_url, model, replicas[victim], concurrency, max_tokens,
                                         kill_at_s, down_s, after_restart_s, seed))
    times, stats, events = info["times"], info["stats"], info["events"]
    windows = _intervals(events["health"], victim, times["end"] + 1)
    dispatched = [d["t"] for d in events["dispatches"] if d["replica"] == victim]
    ejected_at = next((a for a, _ in windows if a >= times["killed"]), None)
    readmit = [e["t"] for e in events["health"] if e["replica"] == victim and e["event"] == "readmit"
               and e["t"] >= times["restart_begin"]]
    readmitted_at = readmit[0] if readmit else None
    counts = dict.fromkeys(KINDS, 0)
    for o in outcomes:
        counts[o.kind] += 1
    return ChaosReport(
        counts=counts, duration_s=times["end"] - times["start"], victim=victim, killed_at=times["killed"],
        relaunched_at=times["restart_begin"], restarted_at=times["restarted"], ejected_at=ejected_at,
        readmitted_at=readmitted_at,
        dispatched_while_ejected=sum(any(a <= t < b for a, b in windows) for t in dispatched),
        dispatched_before_ejection=sum(times["killed"] <= t < (ejected_at or times["end"]) for t in dispatched),
        dispatched_after_readmission=sum(t >= readmitted_at for t in dispatched) if readmitted_at else 0,
        router_stats=stats, outcomes=outcomes)
