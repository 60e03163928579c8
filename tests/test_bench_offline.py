"""The offline benchmark's pieces: workload, summaries, roofline, the error path, the JSON shape."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.bench import loadinfo
from common.bench.engines import guarded
from common.bench.metrics import identical_fraction, matmul_params, percentile, summarize, workload_roofline
from common.bench.offline import run_offline
from common.bench.workload import make_workload, parse_range
from common.model.llama import Llama
from common.models import load_config


def _forward_flops(model: Llama, n: int) -> int:
    """FLOPs torch counts for one forward of `n` tokens with the LM head on the last one only."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, n, dtype=torch.long, device="meta"), last_only=True)
    return counter.get_total_flops()


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


def test_summary_arithmetic():
    w = make_workload(4, "10", "5", 1000)
    s = summarize(w, 2.0, [0.1, 0.2, 0.3, 0.4], [0.01] * 4)
    assert s["output_tokens_per_s"] == 10 and s["total_tokens_per_s"] == 30 and s["requests_per_s"] == 2
    assert s["ttft_p50_ms"] == pytest.approx(250) and percentile([1.0, 3.0], 50) == 2.0
    assert identical_fraction([[1], [2]], [[1], [3]]) == 0.5


def test_roofline_counts_the_flops_of_the_real_forward():
    """Oracles independent of matmul_params' formula: the parameter count of the model's own module
    tree, and the FLOPs torch's FlopCounterMode counts in its forward (meta device: shapes only)."""
    cfg = load_config("smollm2-135m")
    with torch.device("meta"):
        model = Llama(cfg)
    layers, head = matmul_params(cfg)
    assert layers == sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2)
    assert head == model.embed_tokens.weight.numel()  # the tied LM head
    # one more token through the layers costs 2 FLOPs per layer weight (+ a little attention);
    # the LM head is paid once per forward with last_only
    f1, f2 = _forward_flops(model, 1), _forward_flops(model, 2)
    per_token, per_head = f2 - f1, 2 * f1 - f2
    w = make_workload(4, "10", "5", 1000)  # 40 prompt tokens, 20 output tokens
    roof = workload_roofline(w, cfg, 1e12)
    expected = per_token * (w.num_input_tokens + w.num_output_tokens) + per_head * w.num_output_tokens
    assert roof["flops"] == pytest.approx(expected, rel=5e-3)  # attention, ignored by the roofline, is < 0.5 %
    assert roof["min_seconds"] == pytest.approx(expected / 1e12, rel=5e-3)
    assert roof["output_tokens_per_s"] == pytest.approx(20 / roof["min_seconds"])


def test_failing_engine_is_reported_not_dropped():
    r = guarded("x", lambda: 1 / 0)
    assert r["engine"] == "x" and "ZeroDivisionError" in r["error"]


def test_run_offline_on_tiny_writes_the_schema(tmp_path, capsys):
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
    load = data["machine"]["load"]
    assert set(load) == {"start", "end"} and load["end"]["cores"] >= 1
    printed = capsys.readouterr().out
    assert f"machine load at start: {load['start']['load_1min']:.2f} (1 min)" in printed
    assert ("WARNING" in printed) == (load["start"]["too_busy"] or load["end"]["too_busy"])


def test_load_warning_when_busy(monkeypatch):
    monkeypatch.setattr(loadinfo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(loadinfo, "load_average", lambda: (2.4, 1.0))
    start, end = loadinfo.load_snapshot("start"), loadinfo.load_snapshot("end")
    assert start["too_busy"] and not end["too_busy"]  # the end allows the run's own threads: cores + 0.5
    assert "WARNING: load 2.40 at start exceeds 2 on 2 cores" in loadinfo.load_block(start, end)
    assert "WARNING" not in loadinfo.load_line(end)
    monkeypatch.setattr(loadinfo, "load_average", lambda: (0.3, 0.2))
    assert "WARNING" not in loadinfo.load_line(loadinfo.load_snapshot("start"))
