"""The serving benchmark: arrivals, percentiles, counting, failures, the JSON layout, the CLI."""
from __future__ import annotations

import json
import math

import pytest

from common.bench.__main__ import main as bench_main
from common.bench.serve import (load_trace, parse_rates, poisson_arrivals, random_requests, run_serve,
                                summarize_run)
from common.bench.serve_client import RequestResult
from fake_openai_server import FAIL_TOKEN, FakeServer

RESULT_KEYS = {"request_rate", "completed", "failed", "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms",
               "output_tokens_per_s", "requests_per_s", "goodput_requests_per_s"}


def test_poisson_arrivals_seeded_and_at_rate():
    a, b = poisson_arrivals(2000, 4.0, seed=3), poisson_arrivals(2000, 4.0, seed=3)
    assert a == b and a[0] == 0.0 and all(x <= y for x, y in zip(a, a[1:]))
    assert 1999 / a[-1] == pytest.approx(4.0, rel=0.1)  # mean gap 1/rate
    assert poisson_arrivals(5, math.inf) == [0.0] * 5
    assert poisson_arrivals(50, 4.0, seed=4) != a[:50]


def test_parse_rates_and_bad_input():
    assert parse_rates("1,2.5,inf") == [1.0, 2.5, math.inf]
    for bad in ("0", "-1", ""):
        with pytest.raises(ValueError):
            parse_rates(bad)
    with pytest.raises(ValueError):
        poisson_arrivals(0, 1.0)


def test_random_requests_reuse_the_offline_workload():
    reqs = random_requests(6, "10:20", "3:5", vocab_size=100, rate=2.0, seed=1)
    assert len(reqs) == 6
    assert all(10 <= r.prompt_len <= 20 and 3 <= r.output_len <= 5 for r in reqs)
    assert all(3 <= t < 100 for r in reqs for t in r.prompt)  # special ids 0..2 never drawn
    assert [r.prompt for r in reqs] == [r.prompt for r in random_requests(6, "10:20", "3:5", 100, 8.0, seed=1)]


def _done(i: int, ttft: float, e2e: float, n: int, itl: list[float]) -> RequestResult:
    r = RequestResult(i, prompt_len=10, max_tokens=n, ttft_s=ttft, e2e_s=e2e, chunks=n, itl_s=itl)
    return r


def test_summary_percentiles_goodput_and_failures_on_known_inputs():
    results = [_done(i, ttft=(i + 1) / 10, e2e=(i + 1) / 10 + 0.9, n=10, itl=[0.1] * 9) for i in range(10)]
    failed = RequestResult(10, prompt_len=10, max_tokens=10, error="RuntimeError: HTTP 500: boom")
    s = summarize_run(results + [failed], duration_s=2.0, request_rate=4.0, slo_ttft_ms=500, slo_tpot_ms=150)
    assert s["completed"] == 10 and s["failed"] == 1
    assert s["errors"] == [{"index": 10, "error": "RuntimeError: HTTP 500: boom"}]
    # TTFT 100..1000 ms: linear-interpolated p50 = 550, p90 = 910, p99 = 991
    assert s["ttft_ms"]["p50"] == pytest.approx(550) and s["ttft_ms"]["p90"] == pytest.approx(910)
    assert s["ttft_ms"]["p99"] == pytest.approx(991)
    assert s["tpot_ms"]["p50"] == pytest.approx(100)  # (e2e - ttft) / (10 - 1) = 0.9 / 9
    assert s["itl_ms"]["p99"] == pytest.approx(100)
    assert s["requests_per_s"] == pytest.approx(5.0) and s["output_tokens_per_s"] == pytest.approx(50.0)
    assert s["goodput_requests_per_s"] == pytest.approx(2.5)  # TTFT <= 500 ms: 5 of 10 requests
    assert RESULT_KEYS <= set(s)


def test_usage_count_wins_over_chunks_and_tpot_needs_two_tokens():
    r = RequestResult(0, 5, 8, ttft_s=0.1, e2e_s=0.8, chunks=4, usage_tokens=8)
    assert r.output_tokens == 8 and r.tpot_s == pytest.approx(0.1)
    assert RequestResult(0, 5, 1, ttft_s=0.1, e2e_s=0.1, chunks=1).tpot_s is None


def test_against_a_streaming_server_counts_and_json(tmp_path):
    out = tmp_path / "serve.json"
    with FakeServer() as srv:
        report = run_serve(srv.base_url, "fake", "50,inf", num_prompts=8, input_len="6:12", output_len="3:7",
                           vocab_size=100, seed=2, json_path=out, progress=False, print_results=False)
        assert srv.requests == 2 + 16  # two unmeasured warm-up requests, then 8 per rate
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"server", "workload", "results", "load"}
    assert {"load_1min", "load_5min", "cores", "too_busy"} <= set(report["load"]["start"])
    assert [r["request_rate"] for r in report["results"]] == [50.0, "inf"]
    assert report["workload"]["seeds"] == [2, 3]  # fresh prompts per rate: no prefix-cache carry-over
    for i, r in enumerate(report["results"]):
        expected_tokens = sum(q.output_len for q in random_requests(8, "6:12", "3:7", 100, 1.0, seed=2 + i))
        assert RESULT_KEYS <= set(r)
        assert r["completed"] == 8 and r["failed"] == 0
        assert r["output_tokens"] == expected_tokens
        assert 0 < r["ttft_ms"]["p50"] <= r["ttft_ms"]["p90"] <= r["ttft_ms"]["p99"]
        assert r["e2e_ms"]["p50"] >= r["ttft_ms"]["p50"]


def test_failed_requests_are_counted_with_their_error(tmp_path):
    trace = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 10.0 + i * 0.01, "prompt_token_ids": [FAIL_TOKEN if i == 1 else 5, 6, 7],
             "output_len": 4, "session_id": f"s{i % 2}"} for i in range(4)]
    trace.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_trace(trace)[0].arrival_s == 0.0
    with FakeServer() as srv:
        report = run_serve(srv.base_url, "fake", "1", trace=trace, warmup=0, progress=False, print_results=False)
        assert sorted(u for u in srv.users) == ["s0", "s0", "s1", "s1"]  # session ids sent as `user`
    (r,) = report["results"]
    assert r["completed"] == 3 and r["failed"] == 1
    assert r["errors"][0]["index"] == 1 and "HTTP 500" in r["errors"][0]["error"]


def test_unreachable_server_fails_every_request_without_raising():
    report = run_serve("http://127.0.0.1:9", "fake", "inf", num_prompts=3, input_len="4", output_len="2",
                       vocab_size=50, progress=False, print_results=False)
    (r,) = report["results"]
    assert r["completed"] == 0 and r["failed"] == 3 and r["ttft_ms"]["p50"] is None


def test_bad_trace_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"timestamp": 0, "output_len": 3}))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        load_trace(bad)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.json"
    with FakeServer() as srv:
        assert bench_main(["serve", "--base-url", srv.base_url, "--model", "fake", "--num-prompts", "4",
                           "--request-rate", "inf", "--input-len", "4:8", "--output-len", "2:3",
                           "--vocab-size", "64", "--slo-ttft-ms", "10000", "--per-request", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["workload"]["slo_ttft_ms"] == 10000 and data["results"][0]["completed"] == 4
    rows = data["results"][0]["requests"]
    assert len(rows) == 4 and all(2 <= r["output_tokens"] <= 3 and r["e2e_ms"] >= r["ttft_ms"] for r in rows)
    printed = capsys.readouterr().out
    assert "TTFT50" in printed
    assert f"[serve] machine load at end: {data['load']['end']['load_1min']:.2f} (1 min)" in printed


def test_prom_scrape_reads_vllm_counters():
    from common.bench.prom import delta, scrape

    with FakeServer() as srv:
        before = scrape(srv.base_url, ("prefix_cache_queries", "prefix_cache_hits", "no_such_metric"))
        run_serve(srv.base_url, "fake", "inf", num_prompts=3, input_len="8", output_len="2", vocab_size=50,
                  warmup=0, progress=False, print_results=False)
        after = scrape(srv.base_url, ("prefix_cache_queries", "prefix_cache_hits", "no_such_metric"))
    assert before["missing"] == after["missing"] == ["no_such_metric"]
    assert delta(after, before)["prefix_cache_queries"] == 24 == srv.queries


def test_cli_launch_runs_the_same_workload_on_each_server(tmp_path, capsys):
    """`--launch common,common-thread`: both designs of our server start in turn on `tiny`, get the same
    requests, and land in one JSON and one side-by-side table; a bad name is refused before anything starts."""
    out = tmp_path / "launch.json"
    assert bench_main(["serve", "--launch", "common,common-thread", "--model", "tiny", "--num-prompts", "3",
                       "--request-rate", "inf", "--input-len", "4:8", "--output-len", "3", "--warmup", "0",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data) == ["common", "common-thread"]
    for name, report in data.items():
        assert report["server"]["name"] == name and report["results"][0]["completed"] == 3
        assert report["results"][0]["output_tokens"] == 9
    printed = capsys.readouterr().out
    assert "common vs common-thread at rate inf: TTFT p50" in printed
    with pytest.raises(SystemExit):
        bench_main(["serve", "--launch", "common,nope", "--model", "tiny"])
    assert "unknown server(s) nope" in capsys.readouterr().err
