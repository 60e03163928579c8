"""Lab 10 tests: the SSE pieces and request validation as functions, then a real server on loopback
(`tiny`, fp32) serving the implementation under test (COMMON_SERVE_IMPL = its file)."""
import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest

from common.models import load_tokenizer
from common.serve.launch import ServerProcess

CONTEXT = 64


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def limits(impl, tok):
    def chat_ids(messages):
        return tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)
    return impl.Limits("tiny", CONTEXT, 49152, tok.encode, chat_ids)


class Ev:
    def __init__(self, index, ids, reason=None, stop_reason=None):
        self.index, self.token_ids, self.finish_reason, self.stop_reason = index, ids, reason, stop_reason


def test_sse_event_framing(impl):
    payload = {"text": "你好\nworld", "n": [1, 2]}
    event = impl.sse_event(payload)
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[len("data: "):-2]) == payload
    assert impl.sse_event("[DONE]") == "data: [DONE]\n\n"


@pytest.mark.parametrize("stop", [(), ("ing",), (" the", "\n")])
def test_detokenizer_deltas_join_to_the_final_text(impl, tok, stop, rng_seed):
    rng = random.Random(rng_seed)  # printed when the test fails (labs/conftest.py)
    multibyte = tok.encode("你好，世界！ ünïcødé 🙂🚀")   # characters split over byte-level tokens
    ids = [rng.choice(multibyte) if rng.random() < 0.5 else rng.randrange(49152) for _ in range(60)]
    # the engine stops at the first token whose text contains a stop string
    end = next((k for k in range(1, len(ids) + 1) if any(s in tok.decode(ids[:k]) for s in stop)), len(ids))
    ids = ids[:end]
    stop_reason = next((s for s in stop if s in tok.decode(ids)), None)
    detok = impl.IncrementalDetokenizer(tok, True, stop)
    deltas = [detok.push([t]) for t in ids] + [detok.finish(stop_reason)]
    assert "".join(deltas) == impl.final_text(tok, ids, True, stop_reason) == detok.text
    assert not any(s in d for d in deltas for s in stop), "a stop string was streamed"


def test_detokenizer_waits_for_a_whole_character(impl, tok):
    ids = tok.encode("🙂")
    assert len(ids) > 1 and "\ufffd" in tok.decode(ids[:1])
    detok = impl.IncrementalDetokenizer(tok)
    assert [detok.push([t]) for t in ids] == [""] * (len(ids) - 1) + ["🙂"]
    assert detok.finish() == ""


def test_stream_sse_one_chunk_per_event_then_usage_and_done(impl, tok):
    ids = tok.encode(" hello 🙂 world")

    async def events():
        for t in ids[:-1]:
            yield [Ev(0, [t])]
        yield [Ev(0, [ids[-1]], "length")]

    async def main():
        detoks = [impl.IncrementalDetokenizer(tok)]
        return [c async for c in impl.stream_sse(events(), detoks, lambda i, d, r: {"i": i, "text": d, "reason": r},
                                                 lambda n: {"usage": n})]
    chunks = asyncio.run(main())
    assert chunks[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(c[6:]) for c in chunks[:-1]]
    assert bodies[-1] == {"usage": len(ids)} and len(bodies) == len(ids) + 1
    assert "".join(b["text"] for b in bodies[:-1]) == " hello 🙂 world"
    assert [b["reason"] for b in bodies[:-1]] == [None] * (len(ids) - 1) + ["length"]


def test_validate_good_bodies(impl, tok, limits):
    req, ids, params = impl.validate_request(b'{"model": "tiny", "prompt": "hi there", "max_tokens": 3, "temperature":'
                                             b' 0, "stop": "x", "ignore_eos": true, "seed": 4}', "completion", limits)
    assert ids == tok.encode("hi there") and params.max_tokens == 3 and params.temperature == 0.0
    assert params.ignore_eos and params.stop_list == ["x"] and params.seed == 4 and req.model == "tiny"
    _, ids, params = impl.validate_request({"model": "tiny", "prompt": [[5, 6, 7]]}, "completion", limits)
    assert ids == [5, 6, 7] and params.max_tokens == 16, "OpenAI's default max_tokens for completions"
    _, ids, params = impl.validate_request({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 99, "max_completion_tokens": 7}, "chat", limits)
    assert params.max_tokens == 7 and ids == limits.chat_ids([{"role": "user", "content": "hi"}])
    _, ids, params = impl.validate_request({"model": "tiny", "prompt": [1, 2], "max_tokens": None, "top_k": -1,
                                            "temperature": 1e-9}, "completion", limits)
    assert params.max_tokens == CONTEXT - 2 and params.top_k == 0 and params.temperature == 0.0


BAD = [  # (kind, body, param)
    ("completion", b"{oops", None), ("completion", b'"a string"', None),
    ("completion", {"model": "tiny", "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ("completion", {"model": "tiny"}, "prompt"), ("completion", {"model": "other", "prompt": "hi"}, "model"),
    ("completion", {"model": "tiny", "prompt": [1] * CONTEXT}, "prompt"),
    ("completion", {"model": "tiny", "prompt": [-1]}, "prompt"),
    ("completion", {"model": "tiny", "prompt": ""}, "prompt"),
    ("completion", {"model": "tiny", "prompt": ["a", "b"]}, "prompt"),
    ("completion", {"model": "tiny", "prompt": [1, 2], "max_tokens": CONTEXT - 1}, "max_tokens"),
    ("completion", {"model": "tiny", "prompt": "hi", "top_p": 1.5}, "top_p"),
    ("completion", {"model": "tiny", "prompt": "hi", "min_tokens": 17}, "min_tokens"),
    ("completion", {"model": "tiny", "prompt": "hi", "n": 2, "stream": True}, "n"),
    ("chat", {"model": "tiny", "messages": []}, "messages"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 60},
     "max_completion_tokens"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_validate_bad_bodies(impl, limits, case):
    kind, body, param = BAD[case]
    with pytest.raises(impl.APIError) as e:
        impl.validate_request(body, kind, limits)
    assert e.value.status == 400 and e.value.param == param and e.value.message


def test_a_real_server_serves_your_functions(impl):
    with ServerProcess("tiny", dtype="float32", impl=Path(impl.__file__), max_model_len=CONTEXT) as srv, \
            httpx.Client(base_url=srv.base_url, timeout=60) as http:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
        full = http.post("/v1/completions", json=body)
        assert full.status_code == 200, full.text
        text = full.json()["choices"][0]["text"]
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == text
        bad = http.post("/v1/completions", json={**body, "max_tokens": CONTEXT})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
