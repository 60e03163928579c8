"""Chapter 10 server over HTTP (`tiny`, fp32, a child process on a free loopback port): the official
openai client, streamed == non-streamed == LLM.generate for greedy, OpenAI error JSON for every bad
request, 429 with Retry-After, a client disconnect freeing its KV blocks, graceful SIGTERM."""
import asyncio
import json
import signal
import time

import httpx
import openai
import pytest

from common.bench.prom import scrape
from common.engine import LLM, SamplingParams
from common.serve.launch import ServerProcess

MAX_QUEUE = 6
PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3,"]


@pytest.fixture(scope="module")
def srv():
    with ServerProcess("tiny", dtype="float32", max_queue=MAX_QUEUE, max_num_seqs=16, shutdown_timeout=20) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference():
    llm = LLM("tiny", dtype="float32")
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), use_tqdm=False)
    chat = llm.chat([{"role": "user", "content": "Say hi"}], SamplingParams(max_tokens=9, temperature=0.0),
                    use_tqdm=False)
    return [o.outputs[0].text for o in outs], chat[0].outputs[0].text


def _wait_idle(url: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        m = scrape(url, ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"))
        if m["num_requests_running"] == m["num_requests_waiting"] == m["kv_cache_usage_perc"] == 0 \
                or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def test_openai_client_completions_stream_equals_non_stream_equals_generate(client, srv, reference):
    texts, _ = reference
    for prompt, want in zip(PROMPTS, texts):
        kw = dict(model=srv.model_name, prompt=prompt, max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True})
        full = client.completions.create(**kw)
        assert full.choices[0].text == want and full.choices[0].finish_reason == "length"
        assert full.usage.completion_tokens == 12 and full.usage.prompt_tokens > 0
        chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want
        assert sum(1 for c in chunks if c.choices) == 12, "one chunk per token"
        assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


def test_openai_client_chat_stream_and_non_stream(client, srv, reference):
    _, want = reference
    kw = dict(model=srv.model_name, messages=[{"role": "user", "content": "Say hi"}], max_completion_tokens=9,
              temperature=0.0)
    full = client.chat.completions.create(**kw)
    assert full.choices[0].message.content == want and full.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sampling_fields_n_seed_stop_min_tokens(client, srv):
    kw = dict(model=srv.model_name, prompt="Hello", max_tokens=8, temperature=1.0, top_p=0.9, seed=7,
              extra_body={"top_k": 50, "min_tokens": 8})
    a, b = client.completions.create(**kw, n=2), client.completions.create(**kw, n=2)
    assert [c.text for c in a.choices] == [c.text for c in b.choices], "same seed, same text"
    assert a.usage.completion_tokens == 16
    stop_word = a.choices[0].text.strip().split(" ")[0][:3] or "x"
    cut = client.completions.create(**{**kw, "extra_body": {"top_k": 50}}, stop=[stop_word])
    assert stop_word not in cut.choices[0].text


def test_models_health_and_metric_names(srv):
    assert httpx.get(srv.base_url + "/health").status_code == 200
    assert httpx.get(srv.base_url + "/v1/models").json()["data"][0]["id"] == srv.model_name
    text = httpx.get(srv.base_url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:request_success_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"):
        assert f'{name}{{' in text and 'model_name="tiny"' in text, name


def _bad_requests(model: str) -> list[tuple[str, str | bytes | dict, str | None]]:
    """(route, body, param the error names)"""
    ok = {"model": model, "prompt": "hi", "max_tokens": 4}
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return [
        ("completions", "{not json", None),
        ("completions", "[1, 2]", None),
        ("completions", {**ok, "max_tokens": "many"}, "max_tokens"),
        ("completions", {**ok, "prompt": 5}, "prompt"),
        ("completions", {k: v for k, v in ok.items() if k != "prompt"}, "prompt"),
        ("completions", {**ok, "model": "gpt-4"}, "model"),
        ("completions", {**ok, "max_tokens": 5000}, "max_tokens"),
        ("completions", {**ok, "prompt": [1] * 2048}, "prompt"),
        ("completions", {**ok, "prompt": [49152]}, "prompt"),
        ("completions", {**ok, "prompt": []}, "prompt"),
        ("completions", {**ok, "temperature": -1}, "temperature"),
        ("completions", {**ok, "top_p": 0}, "top_p"),
        ("completions", {**ok, "n": 0}, "n"),
        ("completions", {**ok, "min_tokens": 9}, "min_tokens"),
        ("completions", {**ok, "stop": [""]}, "stop"),
        ("completions", {**ok, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("completions", {**ok, "logprobs": 21}, "logprobs"),
        ("completions", b"{\"model\": \"" + model.encode() + b"\", \"prompt\": \"\xff\xfe\"}", None),
        ("completions", {**ok, "n": 2, "stream": True}, "n"),
        ("chat/completions", {**chat, "messages": "hi"}, "messages"),
        ("chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ("chat/completions", {**chat, "max_completion_tokens": 4096}, "max_completion_tokens"),
        ("chat/completions", {**chat, "top_logprobs": 2}, "top_logprobs"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_requests("tiny"))))
def test_bad_requests_get_openai_400(srv, case):
    route, body, param = _bad_requests(srv.model_name)[case]
    kw = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    r = httpx.post(f"{srv.base_url}/v1/{route}", headers={"Content-Type": "application/json"}, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"] and err["param"] == param


def test_unknown_route_is_openai_404(srv):
    r = httpx.get(srv.base_url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_queue_full_429_then_disconnects_free_everything(srv):
    body = {"model": srv.model_name, "prompt": "go", "max_tokens": 1500, "ignore_eos": True, "stream": True}

    async def open_stream(http, streams):
        cm = http.stream("POST", "/v1/completions", json=body)
        resp = await cm.__aenter__()
        assert resp.status_code == 200
        lines = resp.aiter_lines()     # keep it referenced: a collected iterator closes the connection
        while not (await lines.__anext__()).startswith("data:"):
            pass
        streams.append((cm, lines))

    async def main():
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=60) as http:
            streams = []
            for _ in range(MAX_QUEUE - 1):
                await open_stream(http, streams)
            with pytest.raises(httpx.ReadTimeout):   # a non-streamed client that gives up is aborted too
                await http.post("/v1/completions", json={**body, "stream": False}, timeout=1.0)
            for _ in range(100):                     # the server notices the hang-up and aborts
                if scrape(srv.base_url, ("num_requests_running",))["num_requests_running"] == MAX_QUEUE - 1:
                    break
                await asyncio.sleep(0.1)
            await open_stream(http, streams)         # fits again: the timed-out request left the queue
            over = await http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
            busy = scrape(srv.base_url, ("num_requests_running", "kv_cache_usage_perc"))
            for cm, _ in streams:            # the clients go away mid-stream
                await cm.__aexit__(None, None, None)
            return over, busy
    before = scrape(srv.base_url, ("request_success",))["request_success"]
    over, busy = asyncio.run(main())
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert busy["num_requests_running"] == MAX_QUEUE and busy["kv_cache_usage_perc"] > 0
    idle = _wait_idle(srv.base_url)
    assert idle["num_requests_running"] == 0 and idle["kv_cache_usage_perc"] == 0.0, idle
    aborted = scrape(srv.base_url, ("request_success",))["request_success"] - before
    assert aborted == MAX_QUEUE + 1, "every disconnect counted as an abort"
    r = httpx.post(srv.base_url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, "the server accepts work again"


def test_sigterm_drains_the_open_stream_then_exits(srv):
    """Last in the file: it stops the module's server."""
    body = {"model": srv.model_name, "prompt": "go", "max_tokens": 40, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.base_url + "/v1/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        srv.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data:")]
    events = [first] + rest
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) == 40 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM is its clean exit
    assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_tail(200)
