"""The FastAPI app: OpenAI-compatible routes over an `AsyncEngine`.

Routes: POST /v1/completions, POST /v1/chat/completions (both with stream=true as SSE),
GET /v1/models, GET /health, GET /metrics. Handlers read the raw body and validate it themselves
(common.serve.validation) so every client error is OpenAI's error JSON with status 400 (FastAPI's
own validation would answer 422 in its own shape); a full queue answers 429 with Retry-After.
A body above `max_body_bytes` answers 413 unread; validation (it tokenizes) runs in a worker
thread, so a long prompt never stalls the event loop that streams everyone else's tokens.
`api_key` / `allowed_origins` add bearer auth on /v1 and CORS (common.serve.guards); off by default.

The two pieces lab 10 asks readers to write (request validation; the SSE stream with incremental
detokenization) are looked up in an `Impl`, by default this package's functions. The lab's tests
start the server with COMMON_SERVE_IMPL=<file.py> to serve the reader's versions instead.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fastapi import FastAPI, Request
from pydantic import BaseModel
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..models import render_chat
from . import sse, validation
from .detokenize import StreamingDetokenizer
from .async_engine import AsyncEngine, ClientGone, EngineDead
from .guards import DEFAULT_MAX_BODY_BYTES, add_guards, read_body
from .logprobs import LogprobFormat
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import ResponseFactory
from .validation import APIError, Limits, error_body

log = logging.getLogger("common.serve")
IMPL_ENV = "COMMON_SERVE_IMPL"
RETRY_AFTER_S = 1
COMPONENTS = "#/components/schemas/"


@dataclass
class Impl:
    """The swappable pieces (lab 10): validate_request, IncrementalDetokenizer, stream_sse. The server's
    own detokenizer is the O(new tokens) one (common.serve.detokenize); readers write the simple one.

    定义于 第10章 §10.2
    """

    validate_request: Callable = validation.validate_request
    IncrementalDetokenizer: type = StreamingDetokenizer        # O(new tokens); lab 10 writes the simple one
    stream_sse: Callable = sse.stream_sse

    @classmethod
    def from_file(cls, path: str | Path) -> "Impl":
        """Take the three names from a Python file (e.g. labs/lab10/exercises.py)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{IMPL_ENV}={path} is not a file")
        spec = importlib.util.spec_from_file_location(f"serve_impl_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return cls(module.validate_request, module.IncrementalDetokenizer, module.stream_sse)

    @classmethod
    def from_env(cls) -> "Impl":
        path = os.environ.get(IMPL_ENV)
        return cls.from_file(path) if path else cls()


def make_limits(engine: AsyncEngine, model_name: str) -> Limits:
    """The limits validation checks a request against (context length, vocabulary) and its encoders.

    定义于 第10章 §10.2
    """
    tok = engine.tokenizer
    # one encode now: a fast tokenizer resets its truncation/padding state (a mutation) on its first
    # call; requests then encode in worker threads concurrently, and must only ever read it
    tok.encode("warm up", add_special_tokens=False)

    def chat_ids(messages: list[dict]) -> list[int]:
        return render_chat(tok, messages)[1]

    return Limits(model_name, engine.max_model_len, engine.vocab_size, tok.encode, chat_ids)


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_app(engine: AsyncEngine, model_name: str, max_queue: int = 512, impl: Impl | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, api_key: str | None = None,
               allowed_origins: Sequence[str] = ()) -> FastAPI:
    """The app; the engine thread starts with the app's lifespan and stops (cancelling what is
    left) after uvicorn drained the open connections on SIGTERM/SIGINT.

    定义于 第10章 §10.2
    """
    impl = impl or Impl.from_env()
    limits = make_limits(engine, model_name)
    tokenizer = engine.tokenizer

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="common.serve (OpenAI-compatible)", lifespan=lifespan)
    add_guards(app, api_key, allowed_origins)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def schema_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(APIError(f"invalid request: {exc.errors()[:1]}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    async def handle(request: Request, kind: str) -> Response:
        received = time.perf_counter()                  # the request's arrival for TTFT / e2e (as vLLM)
        require_json(request)
        raw = await read_body(request, max_body_bytes)
        req, ids, params = await asyncio.to_thread(impl.validate_request, raw, kind, limits)
        if engine.num_inflight >= max_queue:
            raise APIError(f"the server has {engine.num_inflight} requests in flight (max {max_queue}); retry later",
                           status=429, type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            stream = await engine.submit(ids, params, arrival=received)
        except ValueError as e:                         # refused by LLM.add_request (e.g. KV pool too small)
            raise APIError(str(e)) from None
        except EngineDead as e:
            raise APIError(str(e), status=503, type="server_error", headers={"Retry-After": "5"}) from None
        factory = ResponseFactory(kind, model_name)
        if req.stream:
            return StreamingResponse(_stream_body(stream, ids, params, req, factory), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_abort_on_disconnect(request, stream))
        try:
            return JSONResponse(await _collect(stream, ids, params, factory))
        except ClientGone:
            return Response(status_code=499)          # nobody is listening any more (nginx's code)
        finally:
            watcher.cancel()

    async def _abort_on_disconnect(request: Request, stream) -> None:
        """A non-streamed request whose client hangs up is aborted too (its KV blocks freed).
        The body was read, so the next ASGI message can only be the disconnect."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stream.abort()
                return

    async def _stream_body(stream, ids, params, req, factory: ResponseFactory):
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        detoks = [impl.IncrementalDetokenizer(tokenizer, params.skip_special_tokens, params.stop_list)
                  for _ in range(params.n)]
        events = stream if params.logprobs is None else _attach_logprobs(stream, factory, params)
        async with stream:                              # leaving early (client gone) aborts the request
            try:
                async for chunk in impl.stream_sse(events, detoks, factory.chunk_maker(params.n, include_usage),
                                                   factory.usage_chunk(len(ids)) if include_usage else None):
                    yield chunk
            except EngineDead as e:
                yield sse.sse_event(error_body(str(e), "server_error"))
                yield sse.SSE_DONE

    async def _attach_logprobs(stream, factory: ResponseFactory, params):
        """Hands each event's logprobs object to the factory just before stream_sse makes its chunk."""
        formats = [LogprobFormat(tokenizer, params.logprobs) for _ in range(params.n)]
        async for batch in stream:
            for ev in batch:
                factory.attached[ev.index] = factory.logprobs_of(formats[ev.index], ev.token_ids, ev.logprobs or [])
            yield batch

    async def _collect(stream, ids, params, factory: ResponseFactory) -> dict:
        out: list[list[int]] = [[] for _ in range(params.n)]
        logprobs: list[list[dict[int, float]]] = [[] for _ in range(params.n)]
        reasons: list[tuple[str | None, Any]] = [(None, None)] * params.n
        async with stream:
            try:
                async for batch in stream:
                    for ev in batch:
                        out[ev.index] += ev.token_ids
                        logprobs[ev.index] += ev.logprobs or []
                        if ev.finish_reason is not None:
                            reasons[ev.index] = (ev.finish_reason, ev.stop_reason)
            except EngineDead as e:
                raise APIError(str(e), status=500 if e.crashed else 503, type="server_error") from None
        choices = [(sse.final_text(tokenizer, out[i], params.skip_special_tokens, reasons[i][1]), reasons[i][0])
                   for i in range(params.n)]
        formatted = None
        if params.logprobs is not None:
            formatted = [factory.logprobs_of(LogprobFormat(tokenizer, params.logprobs), out[i], logprobs[i])
                         for i in range(params.n)]
        return factory.full(choices, len(ids), sum(len(o) for o in out), formatted)

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await handle(request, "completion")

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await handle(request, "chat")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "common",
                                            "max_model_len": engine.max_model_len}]}

    @app.get("/health")
    async def health() -> Response:
        if engine.alive:
            return Response(status_code=200)
        return JSONResponse(error_body("the engine is not running", "server_error"), status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if engine.metrics is None:
            return Response("", media_type="text/plain")
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    publish_schemas(app, CompletionRequest, ChatCompletionRequest)
    return app


def require_json(request: Request) -> None:
    """A body declared as another media type (a form, as `curl -d` without -H sends; text/plain) is
    refused with 415 and a message that says what to send; a request without Content-Type is read as JSON.

    定义于 第10章 §10.2
    """
    ctype = request.headers.get("content-type")
    if ctype is not None and ctype.split(";")[0].strip().lower() != "application/json":
        raise APIError(f"Content-Type {ctype[:60]!r} is not supported: send application/json", status=415,
                       code="unsupported_media_type")


def request_body(model: type[BaseModel]) -> dict:
    """The OpenAPI requestBody of a route that reads its raw body itself (to answer OpenAI's 400s, not
    FastAPI's 422s): without it /openapi.json would not say what the route accepts, and schema-driven
    clients and fuzzers (schemathesis, tests/test_serve_schemathesis.py) would send nothing useful.

    定义于 第10章 §10.2
    """
    schema = model.model_json_schema(ref_template=COMPONENTS + "{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def publish_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add the models' nested schemas ($defs) to /openapi.json's components, where request_body refers.

    定义于 第10章 §10.2
    """
    defs: dict = {}
    for model in models:
        defs.update(model.model_json_schema(ref_template=COMPONENTS + "{model}").get("$defs", {}))
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            build().setdefault("components", {}).setdefault("schemas", {}).update(defs)
        return app.openapi_schema
    app.openapi = openapi
