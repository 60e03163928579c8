"""The offline benchmark's pieces: workload, summaries, roofline, the error path, the JSON shape."""
import json

import pytest

from common.bench.engines import guarded
from common.bench.metrics import identical_fraction, matmul_params, percentile, summarize, workload_roofline
from common.bench.offline import run_offline
from common.bench.workload import make_workload, parse_range
from common.models import load_config


def test_parse_range_and_errors():
    assert parse_range("64:256") == (64, 256) and parse_range("7") == (7, 7)
    for bad in ("0:5", "9:3", "a:b", "1:2:3"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_workload_is_reproducible_and_in_range():
    a = make_workload(10, "5:9", "3:4", 1000, seed=3)
    b = make_workload(10, "5:9", "3:4", 1000, seed=3)
    assert a.prompts == b.prompts and a.output_lens == b.output_lens
    assert all(5 <= len(p) <= 9 for p in a.prompts) and all(3 <= n <= 4 for n in a.output_lens)
    assert min(min(p) for p in a.prompts) >= 3  # special tokens avoided


def test_summary_and_roofline_arithmetic():
    w = make_workload(4, "10", "5", 1000)
    s = summarize(w, 2.0, [0.1, 0.2, 0.3, 0.4], [0.01] * 4)
    assert s["output_tokens_per_s"] == 10 and s["total_tokens_per_s"] == 30 and s["requests_per_s"] == 2
    assert s["ttft_p50_ms"] == pytest.approx(250) and percentile([1.0, 3.0], 50) == 2.0
    cfg = load_config("smollm2-135m")
    layers, head = matmul_params(cfg)
    assert head == 576 * 49152 and 100e6 < layers < 110e6
    roof = workload_roofline(w, cfg, 1e12)
    assert roof["flops"] == 2 * (layers * 60 + head * 20)
    assert identical_fraction([[1], [2]], [[1], [3]]) == 0.5


def test_failing_engine_is_reported_not_dropped():
    r = guarded("x", lambda: 1 / 0)
    assert r["engine"] == "x" and "ZeroDivisionError" in r["error"]


def test_run_offline_on_tiny_writes_the_schema(tmp_path):
    out = tmp_path / "b.json"
    with pytest.raises(ValueError, match="unknown engines"):
        run_offline(["nope"], model="tiny")
    result = run_offline(["common"], num_prompts=3, input_len="4:12", output_len="2:5", dtype="float32",
                         model="tiny", json_path=out, check_fp32=False, use_tqdm=False,
                         engine_kwargs={"kv_cache_memory": 8 << 20})
    data = json.loads(out.read_text())
    assert set(data) >= {"workload", "machine", "results"}
    row = data["results"][0]
    assert row["engine"] == "common" and "error" not in row
    assert row["output_tokens_per_s"] > 0 and row["total_tokens_per_s"] > row["output_tokens_per_s"]
    assert result["results"][0]["engine"] == "common"
    assert [len(o) for o in row["outputs"]] == make_workload(3, "4:12", "2:5", 49152).output_lens
