"""The numbers of chapter 10's reliability table, each measured on the `tiny` model (fp32, CPU) in a
bounded time (~5-25 s each on a quiet 2-core CPU). Used by the ch10 notebook and by the server's tests
(tests/test_serve_reliability.py), which assert on the same dicts.

    load_held()        streams held at once, req/s, lost requests
    kv_exhaustion()    a KV pool far too small for the load: preemptions, 429s retried, lost requests
    fuzz_schema()      schemathesis cases from the app's own /openapi.json, and the 5xx among them
    malformed_bodies() invalid UTF-8, huge numbers, deep JSON, wrong content types: the statuses
    engine_failure()   a step raises mid-load: error events / 500s, lost requests, the exit code
    auth_bypass()      requests that try to reach /v1 without the key, and how many got through

"Lost" means the client got neither a complete answer nor a clear error (an SSE error event, a 4xx/5xx
with an OpenAI error body, a 429 to retry): a truncated stream, a reset connection, a hang.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import httpx

from ..bench.prom import scrape
from .launch import ServerProcess

MODEL = "tiny"
VOCAB = 49152                             # tiny shares SmolLM2's tokenizer
SERVER_ENV = {"OMP_NUM_THREADS": "1"}     # a server subprocess on a busy CPU (see DEVELOPING.md)
KV_BYTES_PER_TOKEN_TINY = 3 * 2 * 2 * 16 * 4   # layers * (K, V) * kv heads * head_dim * fp32 bytes


def random_prompts(num: int, seed: int, min_len: int = 4, max_len: int = 24) -> list[list[int]]:
    """Token-id prompts (no tokenizer round trip), reproducible from `seed`.

    定义于 第10章 §10.9
    """
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(min_len, max_len))] for _ in range(num)]


# ---- one streaming client --------------------------------------------------------------------------
async def stream_completion(http: httpx.AsyncClient, model: str, prompt: list[int] | str, max_tokens: int,
                            retry_429: bool = False, **fields: Any) -> dict:
    """One greedy streamed completion. Returns {"status", "text", "finish_reason", "done", "error",
    "retries", "outcome"}; outcome is "ok", "error" (a clear error: status >= 400 with an OpenAI body,
    or an SSE error event before [DONE]) or "lost" (anything else). With retry_429, a 429 is retried
    after its Retry-After (and counted in "retries").

    定义于 第10章 §10.9
    """
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, **fields}
    retries = 0
    while True:
        result = {"status": None, "text": "", "finish_reason": None, "done": False, "error": None}
        try:
            async with http.stream("POST", "/v1/completions", json=body) as r:
                result["status"] = r.status_code
                if r.status_code == 429 and retry_429:
                    retries += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                if r.status_code != 200:
                    result["error"] = json.loads(await r.aread()).get("error")
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            result["done"] = True
                            break
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            result["error"] = chunk["error"]
                            continue
                        for choice in chunk["choices"]:
                            result["text"] += choice["text"]
                            result["finish_reason"] = choice["finish_reason"] or result["finish_reason"]
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            result["error_transport"] = type(e).__name__
        result["retries"] = retries
        result["outcome"] = _outcome(result)
        return result


def _outcome(r: dict) -> str:
    if r["status"] == 200 and r["done"] and r["error"] is None and r["finish_reason"] is not None:
        return "ok"
    clear_http = r["status"] is not None and r["status"] >= 400 and isinstance(r["error"], dict)
    clear_sse = r["status"] == 200 and r["done"] and isinstance(r["error"], dict) and "message" in r["error"]
    return "error" if clear_http or clear_sse else "lost"


async def _many(base_url: str, model: str, prompts: list, max_tokens: int, retry_429: bool = False,
                timeout_s: float = 120) -> list[dict]:
    limits = httpx.Limits(max_connections=len(prompts) + 10, max_keepalive_connections=len(prompts) + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as http:
        return await asyncio.gather(*(stream_completion(http, model, p, max_tokens, retry_429) for p in prompts))


@contextmanager
def _server(**options: Any) -> Iterator[ServerProcess]:
    env = {**SERVER_ENV, **options.pop("env", {})}
    with ServerProcess(MODEL, dtype="float32", shutdown_timeout=5, env=env, **options) as srv:
        yield srv


# ---- the table's rows ------------------------------------------------------------------------------
def load_held(streams: int = 200, max_tokens: int = 16, seed: int = 0) -> dict:
    """`streams` concurrent streaming clients on one server (room for all): how many completed, lost,
    and requests per second over the wall time of the burst.

    定义于 第10章 §10.9
    """
    prompts = random_prompts(streams, seed)
    with _server(max_num_seqs=256, max_queue=max(512, streams)) as srv:
        t0 = time.perf_counter()
        results = asyncio.run(_many(srv.base_url, srv.model_name, prompts, max_tokens))
        wall = time.perf_counter() - t0
    outcomes = Counter(r["outcome"] for r in results)
    return {"streams": streams, "completed": outcomes["ok"], "errors": outcomes["error"], "lost": outcomes["lost"],
            "wall_s": wall, "req_per_s": outcomes["ok"] / wall}


def kv_exhaustion(streams: int = 200, max_tokens: int = 48, kv_tokens: int = 1536, max_queue: int = 120,
                  block_size: int = 16, seed: int = 0) -> dict:
    """A KV pool of `kv_tokens` tokens (tiny: 768 bytes each) against `streams` clients that each need
    prompt + max_tokens (~60) tokens: the engine must preempt (recompute) again and again. With
    `max_queue` < streams some clients get 429 and retry after Retry-After. Returns counts, the
    preemptions from /metrics, and every completed text in prompt order (`texts`, None if not ok).

    定义于 第10章 §10.9
    """
    prompts = random_prompts(streams, seed)
    options = dict(max_num_seqs=64, max_queue=max_queue, block_size=block_size,
                   kv_cache_memory=kv_tokens * KV_BYTES_PER_TOKEN_TINY, enable_prefix_caching=False)
    with _server(**options) as srv:
        before = scrape(srv.base_url, ("num_preemptions",))
        t0 = time.perf_counter()
        results = asyncio.run(_many(srv.base_url, srv.model_name, prompts, max_tokens, retry_429=True))
        wall = time.perf_counter() - t0
        after = scrape(srv.base_url, ("num_preemptions", "num_requests_running", "kv_cache_usage_perc"))
    outcomes = Counter(r["outcome"] for r in results)
    return {"streams": streams, "kv_tokens": kv_tokens, "max_queue": max_queue, "completed": outcomes["ok"],
            "errors": outcomes["error"], "lost": outcomes["lost"],
            "preemptions": int(after["num_preemptions"] - before["num_preemptions"]),
            "got_429": sum(r["retries"] for r in results), "clients_retried": sum(r["retries"] > 0 for r in results),
            "running_after": after["num_requests_running"], "kv_usage_after": after["kv_cache_usage_perc"],
            "wall_s": wall, "prompts": prompts, "max_tokens": max_tokens,
            "texts": [r["text"] if r["outcome"] == "ok" else None for r in results]}


def engine_failure(fail_at_step: int = 150, streams: int = 4, non_streamed: int = 2, max_tokens: int = 400,
                   seed: int = 0) -> dict:
    """A server whose engine step `fail_at_step` raises (COMMON_SERVE_FAIL_AT_STEP, tests only) while
    `streams` streamed and `non_streamed` plain requests run (all arrive within the first few steps and
    need `max_tokens` > fail_at_step steps, so all are in flight when it fails). Each must end with a
    clear error (an SSE error event then [DONE]; a 500 with an OpenAI body), and the process must exit
    non-zero.

    定义于 第10章 §10.9
    """
    from .__main__ import FAULT_ENV
    if max_tokens <= fail_at_step:
        raise ValueError(f"max_tokens ({max_tokens}) must exceed fail_at_step ({fail_at_step}): requests that "
                         "finish before the fault do not test it")
    prompts = random_prompts(streams + non_streamed, seed)

    async def plain(http: httpx.AsyncClient, prompt: list[int]) -> dict:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}
        try:
            r = await http.post("/v1/completions", json=body)
            error = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
            result = {"status": r.status_code, "error": error, "done": False, "finish_reason": None}
        except httpx.HTTPError as e:
            result = {"status": None, "error": None, "error_transport": type(e).__name__, "done": False,
                      "finish_reason": None}
        result["outcome"] = "ok" if result["status"] == 200 else _outcome(result)
        return result

    async def burst(base_url: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            return await asyncio.gather(*(stream_completion(http, MODEL, p, max_tokens) for p in prompts[:streams]),
                                        *(plain(http, p) for p in prompts[streams:]))

    with _server(env={FAULT_ENV: str(fail_at_step)}) as srv:
        results = asyncio.run(burst(srv.base_url))
        try:
            exit_code = srv.proc.wait(timeout=30)
        except Exception:                               # still up: the fault did not stop it (a failure)
            exit_code = None
        log = srv.log_tail(200)
    streamed, plain_results = results[:streams], results[streams:]
    return {"in_flight": len(results),
            "stream_error_events": sum(r["status"] == 200 and r["done"] and r["error"] is not None for r in streamed),
            "http_500": sum(r["status"] == 500 for r in plain_results),
            "completed": sum(r["outcome"] == "ok" for r in results),
            "lost": sum(r["outcome"] == "lost" for r in results),
            "exit_code": exit_code, "fault_logged": "fault injected" in log,
            "error_messages": sorted({(r["error"] or {}).get("message", "") for r in results if r["error"]})}


def _in_process_app(**create_kw: Any):
    """The app on its own small LLM (tiny, fp32, 48-token context), for in-process checks."""
    import torch

    from ..engine import LLM
    from ..models import load_model, load_tokenizer
    from .app import Impl, create_app
    from .async_engine import AsyncEngine
    llm = LLM(load_model(MODEL, torch.float32), num_blocks=64, block_size=8, tokenizer=load_tokenizer(MODEL),
              max_num_seqs=8, max_model_len=48)
    return create_app(AsyncEngine(llm), MODEL, impl=Impl(), **create_kw)


def fuzz_schema(max_examples: int = 25, seed: int = 0) -> dict:
    """schemathesis over the app's own /openapi.json, in process (Starlette's TestClient, lifespan
    started once): for each operation `max_examples` schema-valid cases (the body's `model` set to the
    served one so they reach the engine) and, for POST routes, as many schema-violating ones.
    Returns the number of cases, the 5xx among them and the status counts.

    定义于 第10章 §10.9
    """
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis.generation import GenerationMode

    app = _in_process_app()
    schema = schemathesis.openapi.from_dict(app.openapi())
    statuses: Counter = Counter()
    failures: list[dict] = []
    wanted = {"method", "url", "headers", "json", "content", "data", "params", "cookies"}
    with TestClient(app, raise_server_exceptions=False) as client:
        for result in schema.get_all_operations():
            op = result.ok()
            modes = [GenerationMode.POSITIVE]
            if op.method.upper() == "POST":
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                strategy = op.as_strategy(generation_mode=mode)
                if mode is GenerationMode.POSITIVE and op.method.upper() == "POST":
                    strategy = strategy.map(_serve_model)

                @hypothesis_seed(seed)
                @settings(max_examples=max_examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def send(case) -> None:
                    kw = case.as_transport_kwargs(base_url="http://testserver")
                    r = client.request(**{k: v for k, v in kw.items() if k in wanted})
                    statuses[r.status_code] += 1
                    if r.status_code >= 500:
                        failures.append({"operation": op.label, "body": case.body, "status": r.status_code})
                send()
    return {"cases": sum(statuses.values()), "server_errors": sum(n for s, n in statuses.items() if s >= 500),
            "statuses": dict(sorted(statuses.items())), "failures": failures[:5]}


def _serve_model(case):
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
    return case


MALFORMED: dict[str, tuple[bytes, str]] = {
    "invalid UTF-8": (b'{"model": "tiny", "prompt": "\xff\xfe\xc3("}', "application/json"),
    "invalid UTF-8 outside strings": (b'\x80{"model": "tiny"}', "application/json"),
    "lone surrogate escape": (b'{"model": "tiny", "prompt": "\\ud800"}', "application/json"),
    "huge integer": (b'{"model": "tiny", "prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}", "application/json"),
    "huge float": (b'{"model": "tiny", "prompt": "hi", "temperature": 1e999}', "application/json"),
    "huge n": (b'{"model": "tiny", "prompt": "hi", "n": 99999999999999999999}', "application/json"),
    "deeply nested JSON": (b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                           "application/json"),
    "not JSON": (b"model=tiny&prompt=hi", "application/json"),
    "form content type": (b'{"model": "tiny", "prompt": "hi"}', "application/x-www-form-urlencoded"),
    "text content type": (b'{"model": "tiny", "prompt": "hi"}', "text/plain"),
    "multipart content type": (b'{"model": "tiny", "prompt": "hi"}', "multipart/form-data; boundary=x"),
    "empty body": (b"", "application/json"),
    "JSON array body": (b"[1, 2, 3]", "application/json"),
}


def malformed_bodies(max_body_bytes: int = 1 << 20) -> dict[str, int]:
    """Status per hand-made malformed request (MALFORMED), in process: each must be a 4xx.

    定义于 第10章 §10.9
    """
    from fastapi.testclient import TestClient
    app = _in_process_app(max_body_bytes=max_body_bytes)
    with TestClient(app, raise_server_exceptions=False) as client:
        return {name: client.post("/v1/completions", content=body, headers={"Content-Type": ctype}).status_code
                for name, (body, ctype) in MALFORMED.items()}


def auth_bypass(key: str = "reliability-key-0123456789") -> dict:
    """With --api-key set, requests that try to reach /v1 without it: missing, wrong, truncated or
    extended keys, other schemes, the key in the query string or a cookie, path tricks (case, double
    slash, encoded slash, dot segments, trailing slash), other methods. Returns the attempts and the
    ones that got a 2xx (must be none), plus a control request with the key (must be 200).

    定义于 第10章 §10.9
    """
    from fastapi.testclient import TestClient
    app = _in_process_app(api_key=key)
    bearer = {"Authorization": f"Bearer {key}"}
    attempts: list[tuple[str, str, str, dict]] = [
        ("no header", "GET", "/v1/models", {}),
        ("wrong key", "GET", "/v1/models", {"Authorization": "Bearer wrong"}),
        ("empty bearer", "GET", "/v1/models", {"Authorization": "Bearer "}),
        ("key prefix", "GET", "/v1/models", {"Authorization": f"Bearer {key[:-1]}"}),
        ("key plus suffix", "GET", "/v1/models", {"Authorization": f"Bearer {key}x"}),
        ("basic scheme", "GET", "/v1/models", {"Authorization": f"Basic {key}"}),
        ("bare key", "GET", "/v1/models", {"Authorization": key}),
        ("key in X-API-Key", "GET", "/v1/models", {"X-API-Key": key}),
        ("key in query", "GET", f"/v1/models?api_key={key}", {}),
        ("key in cookie", "GET", "/v1/models", {"Cookie": f"api_key={key}"}),
        ("upper-case path", "GET", "/V1/models", {}),
        ("double slash", "GET", "//v1/models", {}),
        ("encoded slash", "GET", "/v1%2Fmodels", {}),
        ("dot segment", "GET", "/health/../v1/models", {}),
        ("trailing slash", "GET", "/v1/models/", {}),
        ("HEAD", "HEAD", "/v1/models", {}),
        ("OPTIONS preflight", "OPTIONS", "/v1/completions", {"Origin": "http://evil.example",
                                                             "Access-Control-Request-Method": "POST"}),
        ("completion without key", "POST", "/v1/completions", {"Content-Type": "application/json"}),
        ("chat with wrong key", "POST", "/v1/chat/completions",
         {"Content-Type": "application/json", "Authorization": "Bearer nope"}),
    ]
    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})
    results = {}
    with TestClient(app, raise_server_exceptions=False) as client:
        for name, method, path, headers in attempts:
            r = client.request(method, path, headers=headers, content=body if method == "POST" else None)
            results[name] = r.status_code
        control = client.get("/v1/models", headers=bearer).status_code
    through = [name for name, status in results.items() if 200 <= status < 300]
    return {"attempts": len(results), "got_through": len(through), "through": through, "statuses": results,
            "with_key": control}
