"""What stands in front of the routes when the server faces more than its own notebook.

- `read_body`: a body above `max_bytes` gets 413 before it is read (Content-Length), or as soon as a
  chunked body passes the limit, so one client cannot make the server buffer gigabytes.
- `APIKeyMiddleware`: with a key configured (vLLM's --api-key), every /v1 route wants
  `Authorization: Bearer <key>` (compared in constant time, so the response time does not leak how
  much of a guess was right); /health and /metrics stay open for probes and Prometheus.
- `add_cors`: browsers may call the API from the listed origins only; none by default.

Nothing here is active by default except the body limit, which valid requests never reach.
"""
from __future__ import annotations

import hmac
import os
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .validation import APIError, error_body

DEFAULT_MAX_BODY_BYTES = 1 << 20           # 1 MiB: a full 8k-token context as JSON token ids is ~60 kB
API_KEY_ENV = "COMMON_SERVE_API_KEY"       # like vLLM's VLLM_API_KEY
API_KEY_ALIAS_ENV = "OPENAI_API_KEY"       # what OpenAI clients read too: so it comes last, and its use is logged
PROTECTED_PREFIX = "/v1"


def too_large(size: int | None, max_bytes: int) -> APIError:
    """The 413 error for a body over --max-body-bytes.

    定义于 第10章 §10.8
    """
    what = f"has {size} bytes" if size is not None else "goes on past the limit"
    return APIError(f"the request body {what}; the limit is {max_bytes} bytes (--max-body-bytes)",
                    status=413, code="request_too_large", headers={"Connection": "close"})


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, or APIError(413) without reading past `max_bytes` (APIError(400) for a bad length).

    定义于 第10章 §10.8
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(f"invalid Content-Length header {declared[:40]!r}") from None
        if size > max_bytes:
            raise too_large(size, max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise too_large(None, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def api_key_source(flag: str | None) -> tuple[str | None, str | None]:
    """(key, where it came from): --api-key, else $COMMON_SERVE_API_KEY, else $OPENAI_API_KEY; empty
    values count as unset, so `COMMON_SERVE_API_KEY=` ... cannot turn auth on by accident.

    定义于 第10章 §10.8
    """
    if flag:
        return flag, "--api-key"
    for name in (API_KEY_ENV, API_KEY_ALIAS_ENV):
        if os.environ.get(name):
            return os.environ[name], "$" + name
    return None, None


def resolve_api_key(flag: str | None) -> str | None:
    """The key /v1 requires (None: no auth); see api_key_source.

    定义于 第10章 §10.8
    """
    return api_key_source(flag)[0]


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def bearer_matches(authorization: bytes | None, key: bytes) -> bool:
    """`Authorization: Bearer <key>` (scheme case-insensitive), the token compared in constant time.

    定义于 第10章 §10.8
    """
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


class APIKeyMiddleware:
    """Pure ASGI (a BaseHTTPMiddleware would sit between the handlers and the disconnect messages
    they watch): 401 in OpenAI's error schema for a /v1 request without the right bearer token.
    CORS preflights (OPTIONS) pass: browsers send them without credentials.

    定义于 第10章 §10.8
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and _protected(scope["path"]):
            auth = dict(scope["headers"]).get(b"authorization")
            if not bearer_matches(auth, self.key):
                message = "missing API key" if not auth else "incorrect API key provided"
                response = JSONResponse(error_body(message, "invalid_request_error", None, "invalid_api_key"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def parse_origins(text: str | None) -> list[str]:
    """"https://a.example, https://b.example" → the list (empty entries dropped).

    定义于 第10章 §10.8
    """
    return [o.strip() for o in (text or "").split(",") if o.strip()]


def add_guards(app: FastAPI, api_key: str | None, allowed_origins: Sequence[str]) -> None:
    """Auth inside, CORS outside (Starlette: the last added runs first), so that a 401 still carries
    the CORS headers a browser needs to read it, and preflights never meet the key check.

    定义于 第10章 §10.8
    """
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
