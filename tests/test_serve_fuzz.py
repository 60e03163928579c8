"""Fuzz the request schema against a live server: bodies drawn from the pydantic models' JSON schema
(a small schema → hypothesis strategy converter below: hypothesis-jsonschema 0.23.1 does not work
with current hypothesis), the same bodies with one field replaced by junk (also the unsupported
OpenAI fields, which the schema leaves out), arbitrary JSON, and raw bytes (invalid UTF-8).
Whatever arrives, the server answers 200 (with an OpenAI response) or a 4xx OpenAI error, never 5xx.
The server runs with a 48-token context so every accepted request finishes in a few steps."""
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.serve.launch import ServerProcess
from common.serve.protocol import ChatCompletionRequest, CompletionRequest

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


@pytest.fixture(scope="module")
def http():
    with ServerProcess("tiny", dtype="float32", max_model_len=48, max_num_seqs=32, shutdown_timeout=5) as srv:
        with httpx.Client(base_url=srv.base_url, timeout=60) as client:
            yield client


def from_schema(schema: dict, defs: dict | None = None, tight: bool = False) -> st.SearchStrategy:
    """Values matching the JSON-schema subset pydantic emits (type, anyOf, enum, $ref, bounds, items,
    properties/required); optional properties are sometimes left out. `tight` keeps integers in
    [0, 40] and strings non-empty, so that many bodies pass validation and reach the engine."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, tight)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, tight) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    lo, hi = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum")
    if kind == "integer":
        return st.integers(max(lo or 0, 0), min(hi or 40, 40)) if tight else st.integers(lo, hi)
    if kind == "number":
        return st.floats(lo, hi, allow_nan=False, exclude_min="exclusiveMinimum" in schema)
    if kind == "string":
        return st.text(min_size=int(tight), max_size=30)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs, tight), min_size=max(schema.get("minItems", 0),
                                                                                    int(tight)), max_size=5)
    if kind == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", ()))
        fields = {k: from_schema(v, defs, tight) for k, v in props.items()}
        return st.fixed_dictionaries({k: fields[k] for k in props if k in required},
                                     optional={k: fields[k] for k in props if k not in required})
    return json_values


def _bodies(model_cls, route_model: str):
    schema = model_cls.model_json_schema()
    valid = st.one_of(from_schema(schema), from_schema(schema, tight=True)).map(
        lambda b: {**b, "model": route_model} if isinstance(b, dict) else b)
    fields = sorted(schema["properties"]) + sorted(model_cls.UNSUPPORTED)    # those are left out of the schema
    mutated = st.tuples(valid, st.sampled_from(fields), json_values).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(valid, mutated, json_values)


def _check(http: httpx.Client, route: str, body) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body)
    r = http.post(route, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("application/json"):
        data = r.json()
        assert ("choices" in data) if r.status_code == 200 else set(data["error"]) == {"message", "type", "param",
                                                                                         "code"}
    else:
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), (body, r.text[-200:])


@FUZZ
@given(body=_bodies(CompletionRequest, "tiny"))
def test_fuzz_completions_never_5xx(http, body):
    _check(http, "/v1/completions", body)


@FUZZ
@given(body=_bodies(ChatCompletionRequest, "tiny"))
def test_fuzz_chat_never_5xx(http, body):
    _check(http, "/v1/chat/completions", body)


raw_bytes = st.binary(max_size=64) | st.binary(max_size=16).map(lambda b: b'{"model": "tiny", "prompt": "' + b + b'"}')


@FUZZ
@given(body=raw_bytes)
def test_fuzz_raw_bytes_never_5xx(http, body):
    """Bytes that are not UTF-8 (or not JSON) inside and around a body: a 4xx, never a crash."""
    _check(http, "/v1/completions", body)
