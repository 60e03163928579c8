"""`ServerProcess`: our server (`python -m common.serve`) in a child process on a free loopback port.

    with ServerProcess("tiny", max_num_seqs=64) as srv:       # waits until /health answers 200
        httpx.post(srv.base_url + "/v1/completions", json={"model": srv.model_name, "prompt": "Hi"})

Keyword arguments become command-line flags (max_num_seqs=64 → --max-num-seqs 64; True → the bare
flag, False → --no-<flag>; api_key="k" → --api-key k, then clients send `Bearer k`). `impl=path`
serves lab 10's functions from that file (COMMON_SERVE_IMPL).
The log goes to a file (`srv.log_path`, `srv.log_tail()`); exit sends SIGTERM to the process group
(the server drains, then cancels) and SIGKILL after `grace_s`. Built on common.peers.process.ManagedServer.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..peers.process import ManagedServer, free_port
from .app import IMPL_ENV
from .guards import API_KEY_ALIAS_ENV, API_KEY_ENV


def flags(options: dict) -> list[str]:
    """{"max_num_seqs": 64, "enable_prefix_caching": False} → ["--max-num-seqs", "64", "--no-enable-prefix-caching"].

    定义于 第10章 §10.2
    """
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


class ServerProcess(ManagedServer):
    """Start `python -m common.serve` on enter (waits for /health), stop it on exit.

    定义于 第10章 §10.2
    """

    def __init__(self, model: str = "smollm2-135m", port: int | None = None, impl: str | Path | None = None,
                 log_path: str | Path | None = None, startup_timeout_s: float = 180, env: dict | None = None,
                 **options) -> None:
        self.port = port or free_port()
        self.model = model
        self.model_name = options.get("served_model_name") or model
        args = [sys.executable, "-m", "common.serve", "--model", model, "--host", "127.0.0.1",
                "--port", str(self.port), *flags(options)]
        root = str(Path(__file__).resolve().parents[2])          # `-m common.serve` from any working directory
        path = os.environ.get("PYTHONPATH")
        # the key comes from api_key= only: a notebook's OPENAI_API_KEY (set for clients) must not turn auth on
        env = {API_KEY_ENV: "", API_KEY_ALIAS_ENV: "", **(env or {}), "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": root + (os.pathsep + path if path else "")}
        if impl is not None:
            env[IMPL_ENV] = str(Path(impl).resolve())
        super().__init__(args, f"http://127.0.0.1:{self.port}", "/health", env=env, log_path=log_path,
                         startup_timeout_s=startup_timeout_s, name=f"common.serve-{model}")

    @property
    def served_model_name(self) -> str:
        """Same attribute name as common.peers.vllm_server.VLLMServer."""
        return self.model_name
