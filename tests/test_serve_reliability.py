"""Chapter 10's reliability table, asserted (common.serve.reliability, tiny fp32 on CPU):

- KV exhaustion: a pool of 1536 tokens against 200 concurrent streams of ~60 tokens each: the engine
  preempts again and again, a max queue of 120 turns some clients away with 429 (they retry after
  Retry-After), and still every request completes, none is lost, and every greedy text equals the
  same request generated without preemption (all together with a large pool, and a sample alone);
- an engine step that raises: streamed requests get an SSE error event then [DONE], plain ones a 500
  in OpenAI's error schema, none is lost, and the server exits non-zero for its supervisor;
- schemathesis over the app's own OpenAPI schema: zero 5xx; hand-made malformed bodies (invalid
  UTF-8, huge numbers, deep nesting, wrong content types): all 4xx;
- auth: no attempt to reach /v1 without the key gets a 2xx.
"""
import os
import random
import secrets

import pytest
import torch

from common.engine import LLM, SamplingParams
from common.models import load_model, load_tokenizer
from common.serve import reliability


@pytest.fixture(scope="module")
def exhausted():
    """One load run for both tests (module scope: its seed is drawn here, TEST_SEED honoured, and named
    in every assert message)."""
    seed = int(os.environ.get("TEST_SEED") or secrets.randbelow(2**31 - 1))
    result = reliability.kv_exhaustion(streams=200, max_tokens=48, kv_tokens=1536, max_queue=120, seed=seed)
    return {**result, "seed": seed}


def test_kv_exhaustion_preempts_refuses_with_429_and_loses_nothing(exhausted):
    r = exhausted
    assert r["completed"] == r["streams"] == 200 and r["lost"] == 0 and r["errors"] == 0, \
        {k: v for k, v in r.items() if k not in ("prompts", "texts")}   # includes the seed
    assert r["preemptions"] >= 20, f"the pool was meant to run out: only {r['preemptions']} (seed {r['seed']})"
    assert r["got_429"] >= 1 and r["clients_retried"] >= 1, f"max_queue 120 < 200 clients (seed {r['seed']})"
    assert r["running_after"] == 0 and r["kv_usage_after"] == 0, "everything freed afterwards"


def test_kv_exhaustion_outputs_equal_the_requests_without_preemption(exhausted):
    prompts, texts = exhausted["prompts"], exhausted["texts"]
    params = SamplingParams(max_tokens=exhausted["max_tokens"], temperature=0.0, ignore_eos=True)
    llm = LLM(load_model("tiny", torch.float32), tokenizer=load_tokenizer("tiny"), num_blocks=2048, block_size=16,
              max_num_seqs=256)
    together = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    assert llm.scheduler.num_preemptions == 0, "the reference must not preempt"
    differ = [i for i, (a, b) in enumerate(zip(texts, together)) if a != b]
    seed = exhausted["seed"]
    assert not differ, f"{len(differ)} of {len(texts)} texts differ from the unpreempted run (seed {seed})"
    for i in random.Random(seed).sample(range(len(prompts)), 6):     # and truly alone
        alone = llm.generate([prompts[i]], params, use_tqdm=False)[0].outputs[0].text
        assert texts[i] == alone, (i, seed)


def test_engine_failure_errors_every_request_then_exits_nonzero():
    r = reliability.engine_failure(fail_at_step=150, streams=4, non_streamed=2, max_tokens=400)
    assert r["fault_logged"], r
    assert r["stream_error_events"] == 4 and r["http_500"] == 2, r
    assert r["lost"] == 0 and r["completed"] == 0, r
    assert r["exit_code"] not in (None, 0), r
    assert all("engine failed" in m for m in r["error_messages"]), r


def test_schemathesis_finds_no_server_error(rng_seed):
    r = reliability.fuzz_schema(max_examples=20, seed=rng_seed)
    assert r["server_errors"] == 0, r["failures"]
    assert r["cases"] >= 60 and r["statuses"].get(200, 0) >= 5, r["statuses"]   # some reached the engine


def test_malformed_bodies_are_4xx():
    statuses = reliability.malformed_bodies()
    assert set(statuses) == set(reliability.MALFORMED)
    bad = {name: s for name, s in statuses.items() if not 400 <= s < 500}
    assert not bad, bad
    assert statuses["form content type"] == statuses["text content type"] == 415


def test_no_auth_bypass_gets_through():
    r = reliability.auth_bypass()
    assert r["with_key"] == 200, "the control request with the key must work"
    assert r["attempts"] >= 15 and r["got_through"] == 0, r["through"]
