"""Chapter 10 server limits, in process (FastAPI's TestClient around the app on `tiny`, no child
process): 413 for large bodies (by Content-Length and while streaming a chunked body), bearer auth
on /v1 with /health and /metrics open, CORS only when configured, --max-model-len refused beyond
the trained positions, at most 4 stop strings, 400 naming every unsupported OpenAI field that is
set, and 4xx (never 5xx) for bodies that are not UTF-8, too deep, or carry huge numbers."""
import asyncio
import json
from contextlib import contextmanager

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.requests import Request

from common.engine import LLM
from common.models import load_config, load_model, load_tokenizer
from common.serve.__main__ import parse_args
from common.serve.app import Impl, create_app, make_limits
from common.serve.async_engine import AsyncEngine
from common.serve.guards import API_KEY_ALIAS_ENV, API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, read_body
from common.serve.metrics import EngineMetrics
from common.serve.protocol import ChatCompletionRequest, CompletionRequest
from common.serve.validation import APIError, validate_request

KEY = "s3cret-key"
LIMIT = 150_000         # bytes: room for the malformed bodies below, which must reach the JSON parser
OK = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0.0}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0.0}


def _llm() -> LLM:
    """Its own LLM per app: two engine threads must never step one LLM."""
    return LLM(load_model("tiny", torch.float32), num_blocks=300, block_size=8, tokenizer=load_tokenizer("tiny"),
               max_num_seqs=4)


@contextmanager
def served(**kw):
    """The app on a fresh AsyncEngine (started and stopped by the TestClient's lifespan)."""
    app = create_app(AsyncEngine(_llm(), EngineMetrics("tiny")), "tiny", impl=Impl(), **kw)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def plain():
    with served(max_body_bytes=LIMIT) as client:
        yield client


@pytest.fixture(scope="module")
def guarded():
    with served(api_key=KEY, allowed_origins=["http://ui.example"]) as client:
        yield client


def _error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    return err


# ---- body size ------------------------------------------------------------------------------------
def test_body_over_the_limit_by_content_length_is_413(plain):
    assert plain.post("/v1/completions", json=OK).status_code == 200
    big = {**OK, "prompt": "x" * LIMIT}
    err = _error(plain.post("/v1/completions", json=big), 413)
    assert err["code"] == "request_too_large" and str(LIMIT) in err["message"]


def test_chunked_body_over_the_limit_is_413(plain):
    body = json.dumps({**OK, "prompt": "x" * LIMIT}).encode()
    chunks = (body[i:i + 10_000] for i in range(0, len(body), 10_000))
    r = plain.post("/v1/completions", content=chunks, headers={"Content-Type": "application/json"})
    err = _error(r, 413)
    assert err["code"] == "request_too_large" and "past the limit" in err["message"], "refused unread, no length"
    small = json.dumps(OK).encode()
    r = plain.post("/v1/completions", content=iter([small[:10], small[10:]]))
    assert r.status_code == 200, r.text


def test_read_body_stops_reading_at_the_limit():
    """The streamed cap: no chunk past the one that crosses the limit is ever received."""
    received = []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * 600, "more_body": len(received) < 100}

    request = Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive)
    with pytest.raises(APIError) as e:
        asyncio.run(read_body(request, 1000))
    assert e.value.status == 413 and len(received) == 2
    bad = Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"lots")]},
                  receive)
    with pytest.raises(APIError) as e:
        asyncio.run(read_body(bad, 1000))
    assert e.value.status == 400


def test_default_limit_is_one_mebibyte():
    assert DEFAULT_MAX_BODY_BYTES == 1 << 20 == parse_args(["--model", "tiny"]).max_body_bytes


# ---- auth and CORS --------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}])
def test_v1_without_the_right_key_is_401(guarded, headers):
    for method, path, body in [("POST", "/v1/completions", OK), ("POST", "/v1/chat/completions", CHAT),
                               ("GET", "/v1/models", None), ("GET", "/v1/nothing", None)]:
        r = guarded.request(method, path, json=body, headers=headers)
        err = _error(r, 401)
        assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"


def test_v1_with_the_key_and_open_probes(guarded):
    for auth in (f"Bearer {KEY}", f"bearer {KEY}"):
        r = guarded.post("/v1/completions", json=OK, headers={"Authorization": auth})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text
    assert guarded.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert guarded.get("/health").status_code == 200, "probes carry no key"
    r = guarded.get("/metrics")
    assert r.status_code == 200 and "vllm:num_requests_running" in r.text, "Prometheus carries no key"


def test_openai_client_with_and_without_the_key(guarded):
    """The official client sends only what the caller set: it works with the key, and gets
    AuthenticationError without it and BadRequestError for a field we do not implement."""
    def client(key):
        return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=guarded, max_retries=0)
    good = client(KEY)
    out = good.completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2
    chat = good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.choices[0].message.role == "assistant"
    with pytest.raises(openai.AuthenticationError):
        client("wrong").models.list()
    with pytest.raises(openai.BadRequestError) as e:
        good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                     response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"


def test_no_key_no_auth_by_default(plain, monkeypatch):
    assert plain.get("/v1/models").status_code == 200
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(API_KEY_ALIAS_ENV, raising=False)
    assert parse_args(["--model", "tiny"]).api_key is None
    monkeypatch.setenv(API_KEY_ALIAS_ENV, "alias")                # OPENAI_API_KEY, the last fallback
    assert (parse_args(["--model", "tiny"]).api_key, parse_args(["--model", "tiny"]).api_key_source) == \
        ("alias", "$OPENAI_API_KEY")
    monkeypatch.setenv(API_KEY_ENV, "from-env")                   # the server's own variable wins
    assert parse_args(["--model", "tiny"]).api_key == "from-env"
    assert parse_args(["--model", "tiny", "--api-key", "flag"]).api_key == "flag"
    monkeypatch.setenv(API_KEY_ENV, "")                           # empty = unset, then the alias
    assert parse_args(["--model", "tiny"]).api_key == "alias"


def test_cors_only_when_configured(plain, guarded):
    origin = {"Origin": "http://ui.example"}
    assert "access-control-allow-origin" not in plain.get("/health", headers=origin).headers
    assert guarded.get("/health", headers=origin).headers["access-control-allow-origin"] == "http://ui.example"
    evil = guarded.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    preflight = guarded.options("/v1/completions", headers={**origin, "Access-Control-Request-Method": "POST",
                                                            "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200, "a preflight carries no key and must not get 401"
    assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
    denied = guarded.get("/v1/models", headers=origin)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "http://ui.example", \
        "a browser can read the 401"
    assert parse_args(["--model", "tiny", "--allowed-origins", "http://a, http://b,"]).allowed_origins == \
        ["http://a", "http://b"]
    assert parse_args(["--model", "tiny"]).allowed_origins == []


# ---- --max-model-len ------------------------------------------------------------------------------
def test_max_model_len_beyond_trained_positions_refused_at_startup(capsys):
    trained = load_config("tiny").max_position_embeddings
    assert parse_args(["--model", "tiny", "--max-model-len", str(trained)]).max_model_len == trained
    with pytest.raises(SystemExit) as e:
        parse_args(["--model", "tiny", "--max-model-len", str(trained + 1)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "max_position_embeddings" in err and str(trained) in err and "--max-model-len" in err


# ---- request fields -------------------------------------------------------------------------------
def test_at_most_four_stop_strings(plain):
    assert plain.post("/v1/completions", json={**OK, "stop": ["a", "b", "c", "d"]}).status_code == 200
    err = _error(plain.post("/v1/completions", json={**OK, "stop": list("abcde")}), 400, "stop")
    assert "4" in err["message"]
    _error(plain.post("/v1/chat/completions", json={**CHAT, "stop": list("abcde")}), 400, "stop")


UNSUPPORTED = [     # logprobs, top_logprobs and the penalties are implemented (tests/test_serve_logprobs.py)
    ("completion", "echo", True), ("completion", "best_of", 2), ("completion", "suffix", "end"),
    ("completion", "logit_bias", {"42": 100}), ("completion", "min_p", 0.1),
    ("chat", "response_format", {"type": "json_object"}),
    ("chat", "tools", [{"type": "function", "function": {"name": "f"}}]), ("chat", "tool_choice", "required"),
    ("chat", "logit_bias", {"1": -100}), ("chat", "store", True), ("chat", "metadata", [[[[[[[[1]]]]]]]]),
]
DEFAULTS = {
    "completion": {"logprobs": None, "echo": False, "best_of": 1, "suffix": None, "presence_penalty": 0,
                   "frequency_penalty": 0.0, "logit_bias": None, "repetition_penalty": 1.0},
    "chat": {"logprobs": False, "top_logprobs": None, "response_format": {"type": "text"}, "tools": None,
             "tool_choice": "none", "presence_penalty": 0.0, "frequency_penalty": 0, "logit_bias": {},
             "store": False, "parallel_tool_calls": True, "service_tier": "auto"},
}


@pytest.fixture(scope="module")
def limits():
    return make_limits(AsyncEngine(_llm()), "tiny")


@pytest.mark.parametrize("kind,field,value", UNSUPPORTED)
def test_unsupported_fields_set_are_400_naming_them(limits, kind, field, value):
    base = OK if kind == "completion" else CHAT
    with pytest.raises(APIError) as e:
        validate_request({**base, field: value}, kind, limits)
    assert e.value.status == 400 and e.value.param == field and "not supported" in e.value.message


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_unsupported_fields_at_their_defaults_are_accepted(limits, kind):
    base = OK if kind == "completion" else CHAT
    _, ids, params = validate_request({**base, **DEFAULTS[kind], "some_future_field": 1}, kind, limits)
    assert ids and params.max_tokens == 2


def test_unsupported_field_over_http_and_not_in_the_schema(plain):
    err = _error(plain.post("/v1/chat/completions", json={**CHAT, "tools": [{"type": "function"}]}), 400, "tools")
    assert err["type"] == "invalid_request_error"
    _error(plain.post("/v1/completions", json={**OK, "echo": True}), 400, "echo")
    for model in (CompletionRequest, ChatCompletionRequest):     # the fuzz test draws bodies from these
        props = model.model_json_schema()["properties"]
        assert "logit_bias" not in props and "stop" in props and "logprobs" in props, "only real options"


@pytest.mark.parametrize("body", [
    b'{"model": "tiny", "prompt": "\xff\xfe\xfa"}',           # invalid UTF-8 inside a string
    b"\xff\xff\xff\xff",                                      # not text at all
    b"\xc3\x28",                                              # a broken two-byte sequence
    b"[" * 100_000,                                           # deeper than Python's recursion
    b'{"model": "tiny", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",   # beyond int parsing's limit
    b'{"model": "tiny", "prompt": "hi", "logprobs": ' + b"[" * 900 + b"]" * 900 + b"}",
])
def test_malformed_bodies_are_4xx_not_5xx(plain, body):
    r = plain.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
