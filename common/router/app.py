"""The router itself: an aiohttp proxy in front of OpenAI-compatible engine replicas.

Requests to /v1/completions and /v1/chat/completions are parsed just enough to get a routing key
(the prompt's token ids, or the UTF-8 bytes of a text prompt / the chat messages) and a session
id (the OpenAI `user` field, or an X-Session-Id header); the policy picks a replica and the
response is streamed back chunk by chunk as it arrives, so SSE token timing survives the hop.
GET /router/stats shows how many requests each replica got and the in-flight load.
"""
from __future__ import annotations

import json
from typing import Sequence

import aiohttp
from aiohttp import web

from .policies import Policy, make_policy

HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "host"}


def routing_key(path: str, body: dict) -> list[int]:
    """Token ids of a token-id prompt; otherwise the UTF-8 bytes of the text (a character-level
    key, as SGLang's router uses, since the router has no tokenizer)."""
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ValueError("'messages' must be a list")
        text = "".join(f"{m.get('role')}:{m.get('content')}\n" for m in messages if isinstance(m, dict))
        return list(text.encode())
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch: route on its first prompt
    if isinstance(prompt, str):
        return list(prompt.encode())
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    raise ValueError("'prompt' must be a string or a list of token ids")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


class Router:
    """Holds the replicas, their in-flight counts and the policy; builds the aiohttp app."""

    def __init__(self, backends: Sequence[str], policy: str | Policy = "round_robin", **policy_kwargs):
        if not backends:
            raise ValueError("need at least one backend URL")
        self.backends = [b.rstrip("/") for b in backends]
        self.policy_name = policy if isinstance(policy, str) else type(policy).__name__
        self.policy = make_policy(policy, len(self.backends), **policy_kwargs) if isinstance(policy, str) else policy
        self.loads = [0] * len(self.backends)
        self.routed = [0] * len(self.backends)
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self.proxy)
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/router/stats", self.stats)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def choose(self, path: str, body: dict, headers) -> int:
        session = body.get("user") or headers.get("X-Session-Id")
        return self.policy.choose(routing_key(path, body), session, self.loads)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            i = self.choose(request.path, body, request.headers)
        except (ValueError, json.JSONDecodeError) as exc:
            return _error(400, f"router: {exc}")
        self.loads[i] += 1
        self.routed[i] += 1
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
            async with self.session.post(self.backends[i] + request.path, data=raw, headers=headers) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})
                resp.headers["X-Routed-To"] = str(i)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except aiohttp.ClientError as exc:
            return _error(502, f"router: backend {self.backends[i]} failed: {exc}", "backend_error")
        finally:
            self.loads[i] -= 1

    async def models(self, request: web.Request) -> web.Response:
        for url in self.backends:
            try:
                async with self.session.get(url + "/v1/models") as up:
                    return web.json_response(await up.json(), status=up.status)
            except aiohttp.ClientError:
                continue
        return _error(503, "router: no backend answered /v1/models", "backend_error")

    async def health(self, request: web.Request) -> web.Response:
        for url in self.backends:
            try:
                async with self.session.get(url + "/health") as up:
                    if up.status == 200:
                        return web.Response(text="ok")
            except aiohttp.ClientError:
                continue
        return web.Response(status=503, text="no healthy backend")

    async def stats(self, request: web.Request) -> web.Response:
        out = {"policy": self.policy_name, "backends": self.backends, "routed": self.routed, "in_flight": self.loads}
        decisions = getattr(self.policy, "decisions", None)
        if decisions is not None:
            out["decisions"] = decisions
        return web.json_response(out)
