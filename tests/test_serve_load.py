"""Load test (bounded, loopback only): 200 concurrent streaming clients against one `tiny` server.

Every request must complete or get a clear error (a 429 counts as clear), the streamed text must
equal the non-streamed text of the same greedy request (no lost or duplicated tokens), and the KV
cache must be empty afterwards."""
import asyncio
import json
import random
import time

import httpx
import pytest

from common.bench.prom import scrape
from common.serve.launch import ServerProcess

NUM_CLIENTS = 200
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def srv():
    with ServerProcess("tiny", dtype="float32", max_num_seqs=256, max_queue=512, shutdown_timeout=5) as s:
        yield s


async def _one(http: httpx.AsyncClient, model: str, prompt: list[int], stream: bool) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True,
            "stream": stream, "stream_options": {"include_usage": True} if stream else None}
    if not stream:
        r = await http.post("/v1/completions", json=body)
        return {"status": r.status_code, "text": r.json()["choices"][0]["text"] if r.status_code == 200 else None}
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": json.loads(await r.aread())["error"]}
        texts, usage, done = [], None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            texts += [c["text"] for c in chunk["choices"]]
            usage = chunk.get("usage") or usage
        return {"status": 200, "text": "".join(texts), "chunks": len(texts), "usage": usage, "done": done}


async def _all(base_url: str, model: str, prompts: list[list[int]], stream: bool) -> list[dict]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS + 10, max_keepalive_connections=NUM_CLIENTS + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        return await asyncio.gather(*(_one(http, model, p, stream) for p in prompts))


def test_200_concurrent_streams_complete_exactly_and_free_the_cache(srv, rng_seed):
    rng = random.Random(rng_seed)
    prompts = [[rng.randrange(49152) for _ in range(rng.randint(4, 40))] for _ in range(NUM_CLIENTS)]
    t0 = time.perf_counter()
    streamed = asyncio.run(_all(srv.base_url, srv.model_name, prompts, stream=True))
    wall = time.perf_counter() - t0
    ok = [r for r in streamed if r["status"] == 200]
    refused = [r for r in streamed if r["status"] == 429]
    assert len(ok) + len(refused) == NUM_CLIENTS, [r for r in streamed if r["status"] not in (200, 429)][:3]
    assert all(r["done"] and r["chunks"] == MAX_TOKENS and r["usage"]["completion_tokens"] == MAX_TOKENS for r in ok)
    assert len(ok) >= NUM_CLIENTS // 2, f"only {len(ok)} of {NUM_CLIENTS} served"
    plain = asyncio.run(_all(srv.base_url, srv.model_name, prompts, stream=False))
    same = [s["text"] == p["text"] for s, p in zip(streamed, plain) if s["status"] == p["status"] == 200]
    assert same and all(same), f"{same.count(False)} of {len(same)} streamed texts differ from non-streamed"
    m = scrape(srv.base_url, ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"))
    assert m["num_requests_running"] == m["num_requests_waiting"] == m["kv_cache_usage_perc"] == 0, m
    print(f"\nload test: {NUM_CLIENTS} streaming clients, {len(ok)} completed, {len(refused)} got 429, "
          f"{NUM_CLIENTS - len(ok) - len(refused)} other errors, {wall:.1f} s wall, "
          f"kv usage after {m['kv_cache_usage_perc']}")
