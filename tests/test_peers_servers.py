"""The CUDA face of the peer servers, checked without a GPU: the command lines `vllm serve` and SGLang's
`launch_server` get on a CUDA machine (nothing is started: ManagedServer only runs them on enter)."""
import common.peers.sglang_server as sglang_server
import common.peers.vllm_server as vllm_server
from common.peers.vllm_runner import CUDA_PEER_MEMORY_FRACTION


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_vllm_server_on_cuda_shares_the_gpu(monkeypatch):
    monkeypatch.setattr(vllm_server, "_has_cuda", lambda: True)
    srv = vllm_server.VLLMServer("tiny", port=12345)
    assert _flag(srv.args, "--gpu-memory-utilization") == str(CUDA_PEER_MEMORY_FRACTION)
    assert _flag(srv.args, "--block-size") == "16" and srv.proc is None
    mine = vllm_server.VLLMServer("tiny", port=12345, extra_args=["--gpu-memory-utilization", "0.8"])
    assert mine.args.count("--gpu-memory-utilization") == 1 and _flag(mine.args, "--gpu-memory-utilization") == "0.8"


def test_vllm_server_on_cpu_has_no_gpu_flag(monkeypatch):
    monkeypatch.setattr(vllm_server, "_has_cuda", lambda: False)
    srv = vllm_server.VLLMServer("tiny", port=12345)
    assert "--gpu-memory-utilization" not in srv.args and _flag(srv.args, "--block-size") == "32"


def test_sglang_server_command_on_cuda(monkeypatch, tmp_path):
    venv = tmp_path / "sglang"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sglang_server, "_has_cuda", lambda: True)
    monkeypatch.setattr(sglang_server, "SGLANG_VENV", venv)
    assert sglang_server.unavailable_reason() is None
    srv = sglang_server.SGLangServer("tiny", port=23456)
    assert srv.args[:3] == [str(venv / "bin" / "python"), "-m", "sglang.launch_server"]
    assert _flag(srv.args, "--port") == "23456" and _flag(srv.args, "--served-model-name") == "tiny"
    assert _flag(srv.args, "--mem-fraction-static") == str(CUDA_PEER_MEMORY_FRACTION)
    assert srv.base_url == "http://127.0.0.1:23456" and srv.health_path == "/health"
