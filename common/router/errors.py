"""OpenAI-format errors of the router: the JSON body of a refused request and the SSE event that ends a
stream cut by a dying replica (OpenAI's schema, as vLLM sends it: message, type, param, code)."""
from __future__ import annotations

import json

from aiohttp import web

SSE_DONE = b"data: [DONE]\n\n"


class RequestError(ValueError):
    """A request the router cannot route; `param` names the offending field (None for the body itself).

    定义于 第10章 §10.9
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """An OpenAI-format error body, so clients parse router errors like engine errors.

    定义于 第10章 §10.9
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-format error as an aiohttp JSON response.

    定义于 第10章 §10.9
    """
    return web.json_response(error_body(message, type, param, code), status=status, headers=headers)


def sse_error_event(message: str, code: str = "upstream_failed") -> bytes:
    """An OpenAI error object as one SSE event, followed by [DONE], so a client's stream parser ends
    cleanly and knows the answer is incomplete (instead of a silently truncated stream).

    定义于 第10章 §10.9
    """
    payload = json.dumps(error_body(message, "server_error", None, code), separators=(",", ":"))
    return f"data: {payload}\n\n".encode() + SSE_DONE
