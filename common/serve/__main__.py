"""`python -m common.serve --model smollm2-135m --port 8000`: our engine behind an OpenAI-compatible
HTTP API (FastAPI + uvicorn). See common/serve/__init__.py for the pieces.

Defaults suit a notebook on loopback: no auth, no CORS, bodies up to 1 MiB. Facing other clients,
set --api-key (or COMMON_SERVE_API_KEY) and --allowed-origins. --max-model-len may not exceed the
positions the model was trained with (max_position_embeddings): beyond them RoPE extrapolates and
the output degrades silently, so the server refuses to start, as vLLM does."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from ..engine.config import EngineConfig
from .guards import API_KEY_ALIAS_ENV, API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, api_key_source, parse_origins

FAULT_ENV = "COMMON_SERVE_FAIL_AT_STEP"
EXIT_ENGINE_FAILED = 3


def trained_positions(model: str) -> int:
    """The model's max_position_embeddings, read from its config.json (no weights loaded).

    定义于 第10章 §10.2
    """
    from ..models import load_config
    return load_config(model).max_position_embeddings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The server's command-line flags.

    定义于 第10章 §10.2
    """
    p = argparse.ArgumentParser(prog="python -m common.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="common.models name (smollm2-135m, tiny)")
    p.add_argument("--served-model-name", default=None, help="the `model` clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    EngineConfig.add_cli_args(p)     # --dtype, --max-num-seqs, --block-size, ... (vLLM's names and our defaults)
    p.add_argument("--max-queue", type=int, default=512,
                   help="requests in flight (waiting + running) beyond which new ones get 429")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="larger request bodies get 413 without being read (default: 1 MiB)")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer <key>` on /v1/* (default: ${API_KEY_ENV}, else "
                        f"${API_KEY_ALIAS_ENV}, else no auth); /health and /metrics stay open")
    p.add_argument("--allowed-origins", default="",
                   help="comma-separated origins browsers may call the API from (CORS; default: none)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds SIGTERM/SIGINT waits for open requests before cancelling them")
    p.add_argument("--engine-core", choices=("process", "thread"), default="process",
                   help="where the engine's step loop runs: its own process (default, as vLLM V1's EngineCore: "
                        "no GIL shared with HTTP and detokenization) or a thread of the server process")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.max_queue < 1:
        p.error("--max-queue must be >= 1")
    if args.max_body_bytes < 1:
        p.error("--max-body-bytes must be >= 1")
    if args.max_model_len is not None:
        if args.max_model_len < 2:
            p.error("--max-model-len must be >= 2 (a prompt token and a generated one)")
        try:
            trained = trained_positions(args.model)
        except Exception as e:                          # unknown or not installed model
            p.error(f"cannot read the config of --model {args.model}: {e}")
        if args.max_model_len > trained:
            p.error(f"--max-model-len {args.max_model_len} exceeds the {trained} positions {args.model} was "
                    f"trained with (max_position_embeddings); RoPE would extrapolate beyond them. "
                    f"Use --max-model-len {trained} or less.")
    try:
        EngineConfig.from_cli_args(args)            # engine settings checked before any weight is loaded
    except ValueError as e:
        p.error(str(e))
    args.api_key, args.api_key_source = api_key_source(args.api_key)
    args.allowed_origins = parse_origins(args.allowed_origins)
    return args


def fault_step() -> int | None:
    """Fault injection for tests: COMMON_SERVE_FAIL_AT_STEP=N makes the engine's N-th step raise.

    定义于 第10章 §10.2
    """
    value = os.environ.get(FAULT_ENV)
    return int(value) if value else None


def build(args: argparse.Namespace, on_crash: Callable[[BaseException], None] | None = None):
    """The engine (loaded and warmed up, in its own process unless --engine-core thread), its
    AsyncEngine with metrics, and the app. `on_crash` runs once the engine failed and every in-flight
    request got its error.

    定义于 第10章 §10.2
    """
    from .app import create_app
    from .async_engine import AsyncEngine
    from .metrics import EngineMetrics

    config = EngineConfig.from_cli_args(args)
    name = args.served_model_name or args.model
    metrics = EngineMetrics(name)
    if args.engine_core == "process":
        engine = AsyncEngine.spawn(args.model, config, metrics, on_crash, fault_step(), args.log_level)
    else:
        from ..engine import LLM
        from .engine_core import warm_up

        engine = AsyncEngine(warm_up(LLM(args.model, config=config)), metrics, on_crash, fault_step())
    return create_app(engine, name, max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                      api_key=args.api_key, allowed_origins=args.allowed_origins)


def main(argv: list[str] | None = None) -> int:
    """`python -m common.serve`: build the engine and app from the flags and serve with uvicorn.

    定义于 第10章 §10.2
    """
    import uvicorn

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_crash(error: BaseException) -> None:
        """A dead engine answers nothing: drain what got its error, then exit non-zero so a supervisor
        (k8s, compose's restart policy) starts a fresh process, as vLLM does."""
        failures.append(error)
        logging.getLogger("common.serve").error("engine failed (%r): shutting down, exit code %d",
                                                error, EXIT_ENGINE_FAILED)
        if server is not None:
            server.should_exit = True

    if args.api_key:     # say where the key came from: $OPENAI_API_KEY may have been set for a client
        logging.getLogger("common.serve").warning("auth on: /v1 requires the key from %s", args.api_key_source)
    app = build(args, on_crash)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=args.shutdown_timeout, access_log=False))
    server.run()
    return EXIT_ENGINE_FAILED if failures else 0


if __name__ == "__main__":
    sys.exit(main())
