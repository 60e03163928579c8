"""SGLang as a CUDA peer: its real server (`python -m sglang.launch_server`) and its offline engine (`sglang.Engine`).

    with SGLangServer("smollm2-135m") as srv:        # CUDA only
        run_serve(srv.base_url, srv.served_model_name, ...)

SGLang runs only on CUDA here and lives in its own environment, .venv/sglang (its own torch pin; `make setup`
creates it on a machine with an NVIDIA GPU, requirements-sglang-gpu.txt), so both faces run that environment's
Python in a child process: the server through `common.peers.process.ManagedServer` (free loopback port, log
file under .cache/logs/, process group killed on exit, ready when /health answers), the offline engine through
`common/peers/sglang_offline_child.py` (stdlib + sglang only: the notebook process never imports sglang).
`unavailable_reason()` says why SGLang cannot run on this machine ("needs CUDA", or the missing environment);
callers turn that into a table row instead of dropping the engine.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from ..paths import REPO_ROOT, relative_to_repo
from .process import ManagedServer, free_port, log_file, tail_lines
from .vllm_runner import CUDA_PEER_MEMORY_FRACTION

SGLANG_VENV = Path(os.environ.get("SGLANG_VENV", REPO_ROOT / ".venv" / "sglang"))
CHILD_SCRIPT = Path(__file__).with_name("sglang_offline_child.py")


def sglang_python() -> Path:
    """The interpreter of SGLang's own environment (scripts/setup.sh: SGLANG_VENV, default .venv/sglang).

    定义于 第6章 §6.3.4
    """
    venv = SGLANG_VENV if SGLANG_VENV.is_absolute() else REPO_ROOT / SGLANG_VENV
    return venv / "bin" / "python"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def unavailable_reason() -> str | None:
    """None when SGLang can run here, else the reason a reader sees in the table (CUDA first: it is the cause
    on a CPU machine even when the environment is also missing).

    定义于 第6章 §6.3.4
    """
    if not _has_cuda():
        return "needs CUDA (SGLang's engine and server run on NVIDIA GPUs only; this machine has no CUDA device)"
    if not sglang_python().exists():
        return (f"SGLang environment {relative_to_repo(sglang_python().parents[1])} is missing: run `make setup` "
                "on this CUDA machine (LLM_LABS_SGLANG unset or 1)")
    return None


def sglang_version() -> str:
    """SGLang's version in its own environment (`unknown` when that environment is missing).

    定义于 第6章 §6.3.4
    """
    if not sglang_python().exists():
        return "unknown"
    code = "from importlib.metadata import version; print(version('sglang'))"
    out = subprocess.run([str(sglang_python()), "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "unknown"


class SGLangServer(ManagedServer):
    """Start `python -m sglang.launch_server` on enter (waits for /health), stop its process group on exit.

    定义于 第6章 §6.3.4
    """

    def __init__(self, model: str = "smollm2-135m", port: int | None = None, dtype: str = "bfloat16",
                 context_length: int = 2048, mem_fraction_static: float = CUDA_PEER_MEMORY_FRACTION,
                 extra_args: list[str] | None = None, log_path: str | Path | None = None,
                 startup_timeout_s: float = 600, model_path: str | Path | None = None):
        """model_path: a checkpoint folder of your own (e.g. a GPTQ/AWQ INT4 one), served under the name `model`."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"SGLang server cannot start: {reason}")
        from ..models import hf_model_dir

        self.model = str(model_path) if model_path is not None else str(hf_model_dir(model))
        self.served_model_name = model
        self.port = port or free_port()
        args = [str(sglang_python()), "-m", "sglang.launch_server", "--model-path", self.model,
                "--served-model-name", model, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", dtype, "--context-length", str(context_length), "--random-seed", "0"]
        args += ["--mem-fraction-static", str(mem_fraction_static)]   # the notebook's own model shares the GPU
        args += list(extra_args or [])
        env = {"TOKENIZERS_PARALLELISM": "false"}
        log = log_path or log_file(f"sglang-serve-{self.port}")
        super().__init__(args, f"http://127.0.0.1:{self.port}", "/health", env, log, startup_timeout_s,
                         "sglang.launch_server")

    @staticmethod
    def version() -> str:
        return sglang_version()


def run_sglang_offline(spec: dict, timeout_s: float = 1800) -> dict:
    """Run `spec` ({"model_path", "engine": {...Engine kwargs}, "jobs": [{"name", "input_ids", "sampling"}]})
    through `sglang.Engine` in SGLang's environment; returns the child's JSON or {"error": ...}.

    定义于 第6章 §6.3.4
    """
    reason = unavailable_reason()
    if reason:
        return {"error": reason}
    log = log_file("sglang-offline")
    with tempfile.TemporaryDirectory(prefix="sglang-offline-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        with open(log, "wb") as sink:
            try:
                proc = subprocess.run([str(sglang_python()), str(CHILD_SCRIPT), str(spec_path), str(out_path)],
                                      stdout=sink, stderr=subprocess.STDOUT, timeout=timeout_s,
                                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            except subprocess.TimeoutExpired:
                return {"error": f"sglang.Engine did not finish within {timeout_s:.0f} s "
                                 f"(log: {relative_to_repo(log)})"}
        if proc.returncode != 0 or not out_path.exists():
            return {"error": f"sglang.Engine child exited with {proc.returncode} (log: {relative_to_repo(log)}):\n"
                             f"{tail_lines(log, 15)}"}
        return json.loads(out_path.read_text())
