"""A tiny fake OpenAI-compatible completions server for the benchmark and router tests.

It streams exactly max_tokens chunks (one per token, like vLLM), ends with a usage chunk and
[DONE], fails on purpose when the prompt starts with FAIL_TOKEN, and keeps vLLM-style prefix-cache
counters (/metrics: vllm:prefix_cache_queries_total / _hits_total, in tokens, full blocks of
BLOCK tokens) so routing policies can be tested without a model.
"""
from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web

from common.peers.process import free_port

FAIL_TOKEN = 13
BLOCK = 4


class FakeServer:
    """Runs in a background thread: `with FakeServer() as srv: srv.base_url`."""

    def __init__(self, token_delay_s: float = 0.002):
        self.delay = token_delay_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.blocks: set[tuple] = set()
        self.queries = self.hits = self.requests = 0
        self.users: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    def _cache(self, prompt: list[int]) -> None:
        self.queries += len(prompt)
        for end in range(BLOCK, len(prompt) + 1, BLOCK):
            key = tuple(prompt[:end])
            if key not in self.blocks:
                break
            self.hits += BLOCK
        self.blocks.update(tuple(prompt[:end]) for end in range(BLOCK, len(prompt) + 1, BLOCK))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt, n = body["prompt"], int(body["max_tokens"])
        self.requests += 1
        self.users.append(body.get("user"))
        if isinstance(prompt, list) and prompt and prompt[0] == FAIL_TOKEN:
            return web.json_response({"error": {"message": "injected failure", "code": 500}}, status=500)
        self._cache(prompt if isinstance(prompt, list) else list(prompt.encode()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await asyncio.sleep(self.delay)
            choice = {"index": 0, "text": f" t{i}", "finish_reason": "length" if i == n - 1 else None}
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    async def metrics(self, request: web.Request) -> web.Response:
        text = (f"# TYPE vllm:prefix_cache_queries counter\n"
                f'vllm:prefix_cache_queries_total{{model_name="fake"}} {float(self.queries)}\n'
                f'vllm:prefix_cache_hits_total{{model_name="fake"}} {float(self.hits)}\n')
        return web.Response(text=text)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> "FakeServer":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
