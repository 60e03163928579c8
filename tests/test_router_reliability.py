"""The router's failure handling against scripted fake replicas: health checks, ejection and
readmission, retries before the first byte only, timeouts, the SSE error event, OpenAI error bodies."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from aiohttp import web

from common.peers.process import free_port
from common.router import HealthConfig, LeastLoaded, PrefixAware, Router, RouterConfig, SessionSticky, make_policy
from common.router.policies import RoundRobin, stable_hash


class ThreadedApp:
    """An aiohttp app served on a free loopback port from a background thread (`with` starts and stops it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()

    def make_app(self) -> web.Application:
        raise NotImplementedError

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        runner = web.AppRunner(self.make_app(), shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ScriptedReplica(ThreadedApp):
    """An OpenAI-style streaming replica whose behaviour the test sets: `mode` is one of
    ok | status (503 error body) | headers_then_die | die_mid_stream | stall_mid_stream | hang | die_mid_json;
    `healthy` is what /health answers."""

    def __init__(self, mode: str = "ok", tokens: int = 4):
        super().__init__()
        self.mode, self.tokens, self.healthy = mode, tokens, True
        self.requests = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        mode = self.mode
        if mode == "status":
            return web.json_response({"error": {"message": "draining", "type": "server_error", "param": None,
                                                "code": None}}, status=503)
        if mode == "hang":
            await asyncio.sleep(30)
        if mode == "die_mid_json":                               # a plain (non-streamed) body cut short
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"choices": [{"text": "par')
            await asyncio.sleep(0.05)
            request.transport.close()
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "headers_then_die":
            await resp.write(b"")
            request.transport.close()
            return resp
        for i in range(self.tokens):
            await resp.write(f"data: {json.dumps({'choices': [{'index': 0, 'text': f' t{i}'}]})}\n\n".encode())
            await asyncio.sleep(0.01)
            if i == 1 and mode == "die_mid_stream":
                await resp.write(b'data: {"choices": [{"ind')          # half an event, then the process "dies"
                request.transport.close()
                return resp
            if i == 1 and mode == "stall_mid_stream":
                await asyncio.sleep(30)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok") if self.healthy else web.Response(status=503)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/health", self.health)
        return app


class RouterThread(ThreadedApp):
    """A Router (its aiohttp app) served from a background thread; `.router` is the live object."""

    def __init__(self, backends: list[str], policy: str = "round_robin", **config):
        super().__init__()
        health = HealthConfig(**{k: config.pop(k) for k in list(config) if k in HealthConfig.__dataclass_fields__})
        self.router = Router(backends, policy, RouterConfig(health=health, **config))

    def make_app(self) -> web.Application:
        return self.router.app()

    def wait_until(self, predicate, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"condition not met in {timeout_s} s: {self.router.health.replicas}"
            time.sleep(0.02)


def post(url: str, body: dict | bytes | None = None, user: str | None = None, timeout: float = 10) -> httpx.Response:
    body = {"model": "m", "prompt": "hello there", "max_tokens": 4, "stream": True} if body is None else body
    if user is not None:
        body = {**body, "user": user}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + "/v1/completions", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n"), f"stream does not end with a whole event: {text[-40:]!r}"
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def assert_openai_error(obj: dict, param: str | None = None) -> dict:
    err = obj["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and err["param"] == param
    return err


# ---- policies never pick what is not eligible ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["round_robin", "least_loaded", "session", "prefix"])
def test_policies_only_pick_eligible_replicas(name, rng_seed):
    import random
    rnd = random.Random(rng_seed)
    policy = make_policy(name, 4)
    for _ in range(200):
        eligible = rnd.sample(range(4), rnd.randint(1, 3))
        loads = [rnd.randint(0, 5) for _ in range(4)]
        loads[rnd.choice([i for i in range(4) if i not in eligible])] = -1   # the dead one looks idlest
        key = [rnd.randint(0, 9) for _ in range(rnd.randint(0, 40))]
        session = rnd.choice([None, f"user{rnd.randint(0, 20)}"])
        assert policy.choose(key, session, loads, eligible) in eligible
    with pytest.raises(ValueError, match="no eligible replica"):
        policy.choose([1], "u", [0] * 4, [])


def test_least_loaded_and_session_fallbacks():
    ll = LeastLoaded(3)
    assert ll.choose([], None, [0, 5, 1]) == 0
    assert ll.choose([], None, [0, 5, 1], eligible=[1, 2]) == 2         # replica 0 is idle because it is dead
    s = SessionSticky(3)
    users = [f"u{i}" for i in range(30)]
    home = {u: stable_hash(u) % 3 for u in users}
    moved = {u: s.choose([], u, [0, 0, 0], eligible=[0, 2]) for u in users}
    assert all(moved[u] == home[u] for u in users if home[u] != 1)       # only replica 1's sessions move
    assert all(moved[u] in (0, 2) for u in users)
    assert all(s.choose([], u, [0, 0, 0], eligible=[0, 2]) == moved[u] for u in users)   # and stay put
    rr = RoundRobin(3)
    assert [rr.choose([], None, [0] * 3, eligible=[0, 2]) for _ in range(4)] == [0, 2, 0, 2]
    p = PrefixAware(2, block_size=2)
    key = [1, 2, 3, 4]
    first = p.choose(key, None, [0, 0])
    assert p.choose(key, None, [0, 0], eligible=[1 - first]) == 1 - first   # the cached replica is ejected


def test_config_refuses_infinite_or_bad_timeouts():
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        RouterConfig(read_timeout_s=0)
    with pytest.raises(ValueError):
        RouterConfig(max_retries=-1)
    with pytest.raises(ValueError):
        HealthConfig(interval_s=0)


# ---- health checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["least_loaded", "session", "round_robin", "prefix"])
def test_health_checks_eject_and_readmit(policy):
    with ScriptedReplica() as a, ScriptedReplica() as b, RouterThread(
            [a.base_url, b.base_url], policy, interval_s=0.05, timeout_s=0.5) as rt:
        health = rt.router.health
        b.healthy = False
        rt.wait_until(lambda: not health.replicas[1].healthy)
        before = b.requests
        users = [f"user{i}" for i in range(8)]        # about half of them live on replica 1
        assert any(stable_hash(u) % 2 == 1 for u in users)
        for u in users:
            r = post(rt.base_url, user=u)
            assert r.status_code == 200 and r.headers["X-Routed-To"] == "0"
        assert b.requests == before                  # not a single request reached the ejected replica
        assert httpx.get(rt.base_url + "/health").status_code == 200
        stats = httpx.get(rt.base_url + "/router/stats").json()
        assert stats["healthy"] == [True, False] and stats["ejections"] == [0, 1]
        b.healthy = True
        rt.wait_until(lambda: health.replicas[1].healthy)
        routed = {post(rt.base_url, user=u).headers["X-Routed-To"] for u in users}
        assert routed == {"0", "1"}                  # readmitted: it gets its share again
        events = httpx.get(rt.base_url + "/router/events").json()
        assert [(e["event"], e["replica"]) for e in events["health"]] == [("eject", 1), ("readmit", 1)]
        a.healthy = False
        b.healthy = False
        rt.wait_until(lambda: not health.healthy())
        r = post(rt.base_url)
        assert r.status_code == 503 and assert_openai_error(r.json())["code"] == "no_healthy_replica"
        assert httpx.get(rt.base_url + "/health").status_code == 503


# ---- retries -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["status", "headers_then_die", "refused", "hang"])
def test_requests_that_got_no_byte_are_retried_on_another_replica(mode):
    with ScriptedReplica() as a, ScriptedReplica("ok" if mode == "refused" else mode) as b:
        bad = f"http://127.0.0.1:{free_port()}" if mode == "refused" else b.base_url
        # long health interval: the retry, not the health check, must save these requests
        with RouterThread([a.base_url, bad], "round_robin", interval_s=30, read_timeout_s=0.5) as rt:
            rt.router.health.replicas[1].healthy = True
            t0 = time.monotonic()
            replies = [post(rt.base_url) for _ in range(4)]
            elapsed = time.monotonic() - t0
            stats = httpx.get(rt.base_url + "/router/stats").json()
        for r in replies:
            assert r.status_code == 200 and r.headers["X-Routed-To"] == "0"
            events = sse_events(r.text)
            assert events[-1] == "[DONE]" and len(events) == 5 and "error" not in r.text
        assert stats["retries"] >= 1 and stats["failed"] == 0
        if mode == "refused":
            assert stats["healthy"] == [True, False] and stats["retries"] == 1   # ejected at the first refusal
        else:
            assert b.requests >= 2                  # round-robin kept trying it: each try was retried
        if mode == "hang":
            assert elapsed < 4 * 0.5 + 3, elapsed   # the read timeout, not the replica's 30 s, ended each try


def test_retries_are_bounded_and_errors_pass_through():
    with ScriptedReplica("status") as a, ScriptedReplica("status") as b:
        with RouterThread([a.base_url, b.base_url], "round_robin", interval_s=30, max_retries=1) as rt:
            r = post(rt.base_url)
        assert r.status_code == 503 and a.requests == 1 and b.requests == 1   # each replica tried once
        assert assert_openai_error(r.json())["message"] == "draining"          # the replica's own error body
        with RouterThread([a.base_url, b.base_url], "round_robin", interval_s=30, max_retries=0) as rt:
            post(rt.base_url)
        assert a.requests + b.requests == 3


# ---- mid-stream failures -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["die_mid_stream", "stall_mid_stream"])
def test_a_replica_failing_mid_stream_ends_the_stream_with_an_error_event(mode):
    with ScriptedReplica(mode) as a, ScriptedReplica() as b:
        with RouterThread([a.base_url, b.base_url], "round_robin", interval_s=30, read_timeout_s=0.5) as rt:
            r = post(rt.base_url)                    # round-robin: replica 0 first
            stats = httpx.get(rt.base_url + "/router/stats").json()
    assert r.status_code == 200 and r.headers["X-Routed-To"] == "0"
    events = sse_events(r.text)
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == [" t0", " t1"]   # whole events only
    assert events[-1] == "[DONE]" and len(events) == 4
    err = assert_openai_error(json.loads(events[2]))
    assert err["type"] == "server_error" and "mid-stream" in err["message"]
    assert a.requests == 1 and b.requests == 0 and stats["retries"] == 0    # never retried after the first byte
    assert stats["cut_streams"] == 1 and stats["in_flight"] == [0, 0]


# ---- OpenAI error bodies -------------------------------------------------------------------------------------
def test_bad_requests_get_openai_errors_with_param():
    with ScriptedReplica() as a, RouterThread([a.base_url], interval_s=30) as rt:
        cases = [(b"{not json", None), (b"[1, 2]", None),
                 ({"model": "m", "prompt": 3}, "prompt"),
                 ({"model": "m", "prompt": "x", "user": 7}, "user")]
        for body, param in cases:
            r = post(rt.base_url, body)
            assert r.status_code == 400, (body, r.text)
            assert_openai_error(r.json(), param)
        r = httpx.post(rt.base_url + "/v1/chat/completions", json={"model": "m", "messages": "hi"})
        assert r.status_code == 400 and assert_openai_error(r.json(), "messages")
        assert a.requests == 0


def test_a_plain_body_cut_mid_way_reaches_the_client_as_incomplete():
    with ScriptedReplica("die_mid_json") as a, RouterThread([a.base_url], interval_s=30) as rt:
        with pytest.raises(httpx.RemoteProtocolError):      # not a short body that looks complete
            post(rt.base_url, {"model": "m", "prompt": "x", "max_tokens": 2})
        stats = httpx.get(rt.base_url + "/router/stats").json()
    assert a.requests == 1 and stats["cut_streams"] == 1 and stats["retries"] == 0
