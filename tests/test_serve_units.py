"""Chapter 10 server pieces without HTTP: LLM.abort, the AsyncEngine thread (same tokens as
LLM.generate, aborts free KV blocks), validation against a real LLM's limits, metrics names.
(Incremental detokenization and the SSE framing are tested by labs/lab10, on the reference too.)"""
import asyncio
import random

import pytest

from common.engine import LLM, SamplingParams
from common.models import load_tokenizer
from common.serve.app import make_limits
from common.serve.async_engine import AsyncEngine
from common.serve.metrics import EngineMetrics
from common.serve.validation import APIError, validate_request

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _llm(tiny, tok, **kw):
    return LLM(tiny, num_blocks=kw.pop("num_blocks", 64), block_size=8, tokenizer=tok, **kw)


def _prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(49152) for _ in range(rng.randint(1, 30))] for _ in range(n)]


def test_abort_frees_waiting_and_running_sequences(tiny, tok):
    llm = _llm(tiny, tok, max_num_seqs=2)
    ids = [llm.add_request(p, SamplingParams(max_tokens=20, **GREEDY)) for p in _prompts(4)]
    llm.step()
    assert len(llm.scheduler.running) == 2 and len(llm.scheduler.waiting) == 2
    running, waiting = llm.scheduler.running[0].request_id, llm.scheduler.waiting[0].request_id
    assert llm.abort(running) and llm.abort(waiting)
    assert not llm.abort(running), "a second abort finds nothing"
    with pytest.raises(ValueError):
        llm.sequences(running)
    finished = []
    while llm.has_unfinished_requests():
        finished += llm.step()
    assert sorted(s.request_id for s in finished) == sorted(set(ids) - {running, waiting})
    for rid in set(ids) - {running, waiting}:
        llm.abort(rid)                          # forget the finished ones too
    assert llm.block_manager.usage == 0.0 and not llm._requests


def _run_async(llm, prompts, params, abort_after=None):
    """Submit every prompt to an AsyncEngine; abort request `abort_after` after its first token."""
    async def main():
        engine = AsyncEngine(llm, EngineMetrics("tiny"))
        engine.start()
        try:
            streams = [await engine.submit(p, params) for p in prompts]

            async def collect(i, stream):
                out = []
                async with stream:
                    async for events in stream:
                        out += [t for e in events for t in e.token_ids]
                        if i == abort_after:
                            break
                return out
            outs = await asyncio.gather(*(collect(i, s) for i, s in enumerate(streams)))
            for _ in range(100):                 # the abort is applied between steps
                if engine.snapshot.kv_usage == 0.0 and engine.num_inflight == 0:
                    break
                await asyncio.sleep(0.05)
            return outs, engine.snapshot, engine.num_inflight, engine.metrics.render().decode()
        finally:
            await engine.stop()
    return asyncio.run(main())


def test_async_engine_matches_generate_and_aborts_free_blocks(tiny, tok):
    prompts, params = _prompts(6, seed=1), SamplingParams(max_tokens=10, **GREEDY)
    want = [o.outputs[0].token_ids for o in _llm(tiny, tok).generate(prompts, params, use_tqdm=False)]
    outs, snap, inflight, metrics = _run_async(_llm(tiny, tok), prompts, params, abort_after=2)
    assert [o for i, o in enumerate(outs) if i != 2] == [w for i, w in enumerate(want) if i != 2]
    assert 1 <= len(outs[2]) < 10 and outs[2] == want[2][:len(outs[2])]
    assert snap.kv_usage == 0.0 and snap.num_running == 0 and inflight == 0
    assert 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny"} 1.0' in metrics
    assert 'vllm:generation_tokens_total' in metrics


def test_async_engine_refuses_what_llm_refuses(tiny, tok):
    async def main():
        engine = AsyncEngine(_llm(tiny, tok, num_blocks=2))
        engine.start()
        try:
            with pytest.raises(ValueError, match="KV blocks"):
                await engine.submit([1] * 10, SamplingParams(max_tokens=100))
            return engine.num_inflight
        finally:
            await engine.stop()
    assert asyncio.run(main()) == 0


def test_validation_maps_openai_fields(tiny, tok):
    llm = _llm(tiny, tok)
    limits = make_limits(AsyncEngine(llm), "tiny")
    req, ids, params = validate_request(b'{"model": "tiny", "prompt": "hi there", "max_tokens": 3, "temperature": 0,'
                                        b' "stop": "x", "ignore_eos": true, "seed": 4}', "completion", limits)
    assert ids == tok.encode("hi there") and params.max_tokens == 3 and params.greedy and params.ignore_eos
    assert params.stop_list == ["x"] and params.seed == 4
    _, ids, params = validate_request({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                       "max_completion_tokens": 7, "max_tokens": 99}, "chat", limits)
    assert params.max_tokens == 7 and ids == limits.chat_ids([{"role": "user", "content": "hi"}])
    _, ids, params = validate_request({"model": "tiny", "prompt": [5, 6], "max_tokens": None}, "completion", limits)
    assert params.max_tokens == llm.max_model_len - 2, "no max_tokens: the rest of the context (vLLM)"
    with pytest.raises(APIError) as e:
        validate_request({"model": "tiny", "prompt": "x", "max_tokens": llm.max_model_len}, "completion", limits)
    assert e.value.status == 400 and e.value.param == "max_tokens"
