"""The router itself: an aiohttp proxy in front of OpenAI-compatible engine replicas.

Requests to /v1/completions and /v1/chat/completions are parsed just enough to get a routing key
(the prompt's token ids, or the UTF-8 bytes of a text prompt / the chat messages) and a session
id (the OpenAI `user` field, or an X-Session-Id header); the policy picks a healthy replica and the
response is streamed back chunk by chunk as it arrives, so SSE token timing survives the hop.

Failure handling (what vLLM's and SGLang's routers do, and what a bare proxy gets wrong):
- Active health checks eject failing replicas and readmit recovered ones (`health.py`); policies only
  see healthy replicas, so a dead replica (0 in flight) never attracts least-loaded traffic.
- Retries: a completion has no side effect on the replica, so a request that failed before the client
  got its first byte (connection refused, replica gone, timeout, a 408/429/5xx answer) is sent again
  to another replica, at most `max_retries` times. The response headers are only sent to the client
  together with the first body bytes, so "not started" includes a replica that died after its headers.
  After the first byte nothing is retried: the client already holds part of an answer.
- Timeouts: connect and read (between two chunks) timeouts, and a total cap; none is infinite.
- A replica dying mid-stream: the client gets an OpenAI error object as an SSE event, then [DONE]
  (only whole events are forwarded, so the error never lands inside a half-written event).
- Errors are OpenAI error objects with `param`.
GET /router/stats: requests, in-flight load and health per replica, retries, cut streams.
GET /router/events: the ejection/readmission log and the dispatch log (time, replica).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import aiohttp
from aiohttp import web

from .errors import RequestError, error_response, sse_error_event
from .health import HealthConfig, HealthTable
from .policies import Policy, make_policy

HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "host"}
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})   # sglang-router's list


@dataclass
class RouterConfig:
    """The router's timeouts, retries and health-check settings, with their defaults.

    定义于 第10章 §10.2
    """
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0          # the longest silence between two chunks (covers queueing + prefill)
    total_timeout_s: float = 600.0        # a cap on one upstream request, streaming included
    max_retries: int = 2                  # extra attempts, each on a replica not tried yet
    health: HealthConfig = field(default_factory=HealthConfig)

    def __post_init__(self) -> None:
        if min(self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s) <= 0:
            raise ValueError("router timeouts must be > 0 (an infinite timeout lets a hung replica hold connections)")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


def routing_key(path: str, body: dict) -> list[int]:
    """Token ids of a token-id prompt; otherwise the UTF-8 bytes of the text (a character-level
    key, as SGLang's router uses, since the router has no tokenizer).

    定义于 第10章 §10.2
    """
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise RequestError("'messages' must be a list", "messages")
        text = "".join(f"{m.get('role')}:{m.get('content')}\n" for m in messages if isinstance(m, dict))
        return list(text.encode())
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch: route on its first prompt
    if isinstance(prompt, str):
        return list(prompt.encode())
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    raise RequestError("'prompt' must be a string or a list of token ids", "prompt")


@dataclass
class _Failure:
    """An attempt that failed before the client got a byte: retry elsewhere, or report it."""

    message: str
    status: int = 502
    body: bytes | None = None         # the replica's own error body (passed through if nothing else works)
    headers: dict | None = None


class Router:
    """Holds the replicas, their in-flight counts, health and the policy; builds the aiohttp app.

    定义于 第10章 §10.2
    """

    def __init__(self, backends: Sequence[str], policy: str | Policy = "round_robin",
                 config: RouterConfig | None = None, **policy_kwargs):
        if not backends:
            raise ValueError("need at least one backend URL")
        self.backends = [b.rstrip("/") for b in backends]
        self.config = config or RouterConfig()
        self.policy_name = policy if isinstance(policy, str) else type(policy).__name__
        self.policy = make_policy(policy, len(self.backends), **policy_kwargs) if isinstance(policy, str) else policy
        self.health = HealthTable(len(self.backends), self.config.health)
        self.loads = [0] * len(self.backends)
        self.routed = [0] * len(self.backends)
        self.dispatches: deque[tuple[float, int]] = deque(maxlen=100_000)
        self.retries = self.cut_streams = self.failed = 0
        self.session: aiohttp.ClientSession | None = None
        self._checker: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self.proxy)
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health_endpoint)
        app.router.add_get("/router/stats", self.stats)
        app.router.add_get("/router/events", self.events)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        c = self.config
        timeout = aiohttp.ClientTimeout(total=c.total_timeout_s, connect=c.connect_timeout_s,
                                        sock_connect=c.connect_timeout_s, sock_read=c.read_timeout_s)
        self.session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0),
                                             auto_decompress=False)
        self._checker = asyncio.create_task(self._health_loop())

    async def _close(self, app: web.Application) -> None:
        if self._checker is not None:
            self._checker.cancel()
        if self.session is not None:
            await self.session.close()

    # ---- health -------------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(i) for i in range(len(self.backends))))
            await asyncio.sleep(self.config.health.interval_s)

    async def probe(self, i: int) -> bool:
        """One GET /health of replica i, recorded in the health table."""
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.health.timeout_s)
            async with self.session.get(self.backends[i] + "/health", timeout=timeout) as up:
                ok = up.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        self.health.record_probe(i, ok)
        return ok

    # ---- routing ------------------------------------------------------------------------------
    def choose(self, path: str, body: dict, headers, exclude: Sequence[int] = ()) -> int | None:
        """A healthy replica not in `exclude` picked by the policy, or None when there is none."""
        session = body.get("user") or headers.get("X-Session-Id")
        if session is not None and not isinstance(session, str):
            raise RequestError("'user' must be a string", "user")
        key = routing_key(path, body)
        eligible = [i for i in self.health.healthy() if i not in exclude]
        if not eligible:
            return None
        return self.policy.choose(key, session, self.loads, eligible)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, f"router: the body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error_response(400, "router: the request body must be a JSON object")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        tried: list[int] = []
        failure: _Failure | None = None
        for attempt in range(1 + self.config.max_retries):
            try:
                i = self.choose(request.path, body, request.headers, exclude=tried)
            except RequestError as exc:
                return error_response(400, f"router: {exc}", param=exc.param)
            if i is None:
                break
            if attempt:
                self.retries += 1
            tried.append(i)
            outcome = await self._attempt(request, i, raw, headers)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            failure = outcome
        self.failed += 1
        if failure is None:
            return error_response(503, "router: no healthy replica", "server_error", code="no_healthy_replica",
                                  headers={"Retry-After": "1"})
        if failure.body is not None:      # every replica answered with an error: pass the last one through
            return web.Response(status=failure.status, body=failure.body, headers=failure.headers)
        return error_response(failure.status, f"router: {failure.message} (tried replicas {tried})", "server_error",
                              code="upstream_failed")

    async def _attempt(self, request: web.Request, i: int, raw: bytes, headers: dict) -> web.StreamResponse | _Failure:
        """Send the request to replica i. Returns the client's response once its first byte went out,
        else a _Failure (nothing was sent, so the caller may retry)."""
        self.loads[i] += 1
        self.routed[i] += 1
        self.dispatches.append((time.time(), i))
        up: aiohttp.ClientResponse | None = None
        try:
            try:
                up = await self.session.post(self.backends[i] + request.path, data=raw, headers=headers)
                out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS}
                if up.status in RETRY_STATUSES:
                    return _Failure(f"replica {i} answered {up.status}", up.status, await up.read(), out_headers)
                first = await up.content.readany()    # b"" at the end of an empty body
            except aiohttp.ClientConnectorError as exc:
                self.health.eject(i, f"connection failed: {type(exc).__name__}")
                return _Failure(f"replica {i} refused the connection: {exc}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = 504 if isinstance(exc, asyncio.TimeoutError) else 502
                return _Failure(f"replica {i} failed before the first byte: {type(exc).__name__}: {exc}", status)
            return await self._relay(request, up, i, first, out_headers)   # the client gets bytes: no retry
        finally:
            if up is not None:
                up.release()      # closes the connection if the body was not read to the end (aborts upstream)
            self.loads[i] -= 1

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse, i: int, first: bytes,
                     headers: dict) -> web.StreamResponse:
        """Commit the response to the client (headers + first bytes), then stream the rest. A replica that
        fails from here on ends an SSE stream with an error event; a plain body is cut (the connection closes)."""
        resp = web.StreamResponse(status=up.status, headers=headers)
        resp.headers["X-Routed-To"] = str(i)
        sse = up.headers.get("Content-Type", "").startswith("text/event-stream")
        pending = b""                                # SSE: bytes of an event not complete yet
        try:
            await resp.prepare(request)
            chunk = first
            while True:
                if sse:
                    pending += chunk
                    end = pending.rfind(b"\n\n") + 2 if b"\n\n" in pending else 0   # whole events only
                    chunk, pending = pending[:end], pending[end:]
                if chunk:
                    await resp.write(chunk)
                try:
                    chunk = await up.content.readany()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    self.cut_streams += 1
                    if not sse:                  # no way to say "error" inside a JSON body: cut the connection,
                        resp.force_close()       # so the client sees an incomplete response, not a short one
                        if request.transport is not None:
                            request.transport.close()
                        return resp
                    await resp.write(sse_error_event(f"router: replica {i} failed mid-stream "
                                                     f"({type(exc).__name__}); the answer is incomplete"))
                    break
                if not chunk:
                    if pending:
                        await resp.write(pending)
                    break
            await resp.write_eof()
        except ConnectionResetError:                 # the client left; leaving `async with up` aborts upstream
            pass
        return resp

    # ---- other endpoints ----------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        for i in self.health.healthy():
            try:
                async with self.session.get(self.backends[i] + "/v1/models") as up:
                    return web.json_response(await up.json(), status=up.status)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
        return error_response(503, "router: no healthy replica answered /v1/models", "server_error",
                              code="no_healthy_replica")

    async def health_endpoint(self, request: web.Request) -> web.Response:
        if self.health.healthy():
            return web.Response(text="ok")
        return error_response(503, "router: no healthy replica", "server_error", code="no_healthy_replica")

    async def stats(self, request: web.Request) -> web.Response:
        out = {"policy": self.policy_name, "backends": self.backends, "routed": self.routed, "in_flight": self.loads,
               "healthy": [r.healthy for r in self.health.replicas],
               "ejections": [r.ejections for r in self.health.replicas],
               "retries": self.retries, "cut_streams": self.cut_streams, "failed": self.failed}
        decisions = getattr(self.policy, "decisions", None)
        if decisions is not None:
            out["decisions"] = decisions
        return web.json_response(out)

    async def events(self, request: web.Request) -> web.Response:
        return web.json_response({"health": self.health.events,
                                  "dispatches": [{"t": t, "replica": i} for t, i in self.dispatches]})
