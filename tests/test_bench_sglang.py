"""The sglang engine row (common.bench.sglang_peer) and its server (common.peers.sglang_server) on a machine
without CUDA: a row that says "needs CUDA", printed and written to JSON, never a missing engine."""
import json
import subprocess
import sys

import pytest

import common.peers.sglang_server as sglang_server
from common.bench.offline import ENGINES, print_table, run_offline
from common.bench.sglang_peer import run_sglang_peer
from common.bench.workload import make_workload


@pytest.fixture
def no_cuda(monkeypatch):
    """This CPU machine as it is, and a CUDA machine's test run forced onto the CPU answer."""
    monkeypatch.setattr(sglang_server, "_has_cuda", lambda: False)


def test_cpu_row_says_needs_cuda(no_cuda, capsys):
    row = run_sglang_peer(make_workload(2, "4", "2", 1000), "tiny", "float32", [5, 6, 7], 4)
    assert row["engine"] == "sglang" and row["unavailable"].startswith("needs CUDA")
    assert "error" in row and "output_tokens_per_s" not in row   # kept out of comparisons and the figure
    print_table([row])
    assert "sglang needs CUDA" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="needs CUDA"):
        sglang_server.SGLangServer("tiny")


def test_missing_environment_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(sglang_server, "_has_cuda", lambda: True)
    monkeypatch.setattr(sglang_server, "SGLANG_VENV", tmp_path / "no-such-venv")
    reason = sglang_server.unavailable_reason()
    assert "no-such-venv" in reason and "make setup" in reason
    assert sglang_server.run_sglang_offline({"jobs": []}) == {"error": reason}


def test_offline_bench_lists_sglang_row(no_cuda, tmp_path, capsys):
    assert "sglang" in ENGINES
    out = tmp_path / "b.json"
    run_offline(["sglang"], num_prompts=2, input_len="4:8", output_len="2:3", dtype="float32", model="tiny",
                json_path=out, figure=None, check_fp32=False)
    rows = json.loads(out.read_text())["results"]
    assert [r["engine"] for r in rows] == ["sglang"] and rows[0]["unavailable"].startswith("needs CUDA")
    assert "sglang needs CUDA" in capsys.readouterr().out


def test_make_bench_and_cli_default_include_sglang():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    bench_line = next(line for line in makefile.splitlines() if "common.bench offline" in line)
    assert "sglang" in bench_line.split("--engines")[1].split()[0].split(",")


@pytest.mark.skipif(sglang_server._has_cuda(), reason="the CPU answer of the CLI; on CUDA it starts a server")
def test_serve_launch_sglang_cli_on_cpu(tmp_path):
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "-m", "common.bench", "serve", "--launch", "sglang", "--model", "tiny",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sglang needs CUDA" in proc.stdout
    assert json.loads(out.read_text())["sglang"]["server"]["unavailable"].startswith("needs CUDA")
