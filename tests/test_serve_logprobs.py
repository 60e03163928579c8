"""logprobs over HTTP in OpenAI's formats (completions: logprobs=N; chat: logprobs=true + top_logprobs=N),
streamed and not, checked against a transformers fp32 forward of the same tokens within 1e-4; and the
penalties reach the engine (a presence penalty changes a greedy output). In process (TestClient, tiny)."""
import json

import pytest
import torch
from fastapi.testclient import TestClient

from common.engine import LLM
from common.models import load_hf_model, load_model, load_tokenizer
from common.serve.app import Impl, create_app
from common.serve.async_engine import AsyncEngine

TOL = 1e-4
N = 3
MAX_TOKENS = 6
PROMPT = [504, 3458, 282, 4649, 314]           # token ids: no tokenizer round trip
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def client(tok):
    llm = LLM(load_model("tiny", torch.float32), tokenizer=tok, num_blocks=128, block_size=8, max_num_seqs=4)
    with TestClient(create_app(AsyncEngine(llm), "tiny", impl=Impl())) as c:
        yield c


@pytest.fixture(scope="module")
def hf():
    return load_hf_model("tiny", torch.float32).eval()


def hf_greedy(hf, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy continuation and the raw logprobs (log_softmax of fp32 logits) at each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = hf(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
        logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    return ids[len(prompt):], logprobs[len(prompt) - 1:-1]


def close(a, b, tol: float = TOL) -> bool:
    """Equal structure and strings, floats within tol (two runs of the engine may differ in the last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) < tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b


def _post(client, route: str, body: dict) -> dict:
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _stream(client, route: str, body: dict) -> list[dict]:
    with client.stream("POST", route, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_completions_logprobs_match_transformers(client, hf, tok):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True,
            "logprobs": N}
    choice = _post(client, "/v1/completions", body)["choices"][0]
    lp = choice["logprobs"]
    ids, ref = hf_greedy(hf, PROMPT, MAX_TOKENS)
    assert lp["tokens"] == [tok.decode([i]) for i in ids], "greedy tokens differ from transformers"
    for pos, token in enumerate(ids):
        assert abs(lp["token_logprobs"][pos] - ref[pos, token].item()) < TOL
        top = lp["top_logprobs"][pos]
        best = torch.topk(ref[pos], N)
        assert N <= len(top) <= N + 1
        for value, token_id in zip(best.values.tolist(), best.indices.tolist()):
            name = tok.decode([token_id])
            if sum(tok.decode([t]) == name for t in best.indices.tolist() + [token]) == 1:   # no name clash
                assert abs(top[name] - value) < TOL, (pos, name)
    offsets = [0]
    for t in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(t))
    assert lp["text_offset"] == offsets
    # streamed: the chunks' logprobs joined equal the non-streamed object
    chunks = _stream(client, "/v1/completions", body)
    joined = {k: [v for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                  for v in c["choices"][0]["logprobs"][k]] for k in lp}
    assert close(joined, lp)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]


def test_chat_logprobs_match_transformers(client, hf, tok):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True,
            "logprobs": True, "top_logprobs": N}
    choice = _post(client, "/v1/chat/completions", body)["choices"][0]
    content = choice["logprobs"]["content"]
    prompt = tok.encode(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)
    ids, ref = hf_greedy(hf, prompt, MAX_TOKENS)
    assert [c["token"] for c in content] == [tok.decode([i]) for i in ids]
    for pos, (entry, token) in enumerate(zip(content, ids)):
        assert abs(entry["logprob"] - ref[pos, token].item()) < TOL
        values = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(values) == N and values == sorted(values, reverse=True)
        assert max(abs(a - b) for a, b in zip(values, torch.topk(ref[pos], N).values.tolist())) < TOL
    raw = bytes(b for entry in content for b in entry["bytes"])
    assert raw.decode("utf-8", errors="replace") == tok.decode(ids), "bytes are each token's own UTF-8 bytes"
    chunks = _stream(client, "/v1/chat/completions", body)
    streamed = [c for ch in chunks for choice_ in ch["choices"] if choice_["logprobs"]
                for c in choice_["logprobs"]["content"]]
    assert close(streamed, content)


def test_logprobs_zero_and_absent(client):
    base = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2, "temperature": 0.0, "ignore_eos": True}
    assert _post(client, "/v1/completions", base)["choices"][0]["logprobs"] is None
    zero = _post(client, "/v1/completions", {**base, "logprobs": 0})["choices"][0]["logprobs"]
    assert all(len(d) == 1 for d in zero["top_logprobs"]), "logprobs=0: the sampled token only"
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "temperature": 0.0}
    assert _post(client, "/v1/chat/completions", chat)["choices"][0]["logprobs"] is None
    only = _post(client, "/v1/chat/completions", {**chat, "logprobs": True})["choices"][0]["logprobs"]["content"]
    assert len(only) == 2 and all(c["top_logprobs"] == [] for c in only)


@pytest.mark.parametrize("route,body,param", [
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/completions", {"repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_logprobs_and_penalties_are_400_naming_the_field(client, route, body, param):
    base = {"model": "tiny", "max_tokens": 2}
    base.update({"prompt": PROMPT} if route == "/v1/completions" else {"messages": MESSAGES})
    r = client.post(route, json={**base, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_penalties_reach_the_engine(client):
    """The random tiny model repeats one token greedily; a presence penalty of 2 must break the repeat."""
    base = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True,
            "logprobs": 0}
    plain = _post(client, "/v1/completions", base)["choices"][0]["logprobs"]["tokens"]
    assert len(set(plain)) < len(plain), "the premise: the greedy output repeats a token"
    for field in ("presence_penalty", "frequency_penalty"):
        penalized = _post(client, "/v1/completions", {**base, field: 2.0})["choices"][0]["logprobs"]["tokens"]
        assert len(set(penalized)) > len(set(plain)), field
    repeated = _post(client, "/v1/completions", {**base, "repetition_penalty": 5.0})["choices"][0]
    assert len(set(repeated["logprobs"]["tokens"])) > len(set(plain))
