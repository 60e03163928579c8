"""`python -m common.bench serve --launch common,vllm ...`: start each server in turn on this machine, run the
same serving workload against it, stop it, then print one side-by-side table and write one JSON.

Servers: `common` (our server, the engine in its own process), `common-thread` (the same server with the engine
in a thread of the API process: what the process split buys), `vllm` (`vllm serve`, its default compiled mode:
speed is what is compared) and `sglang` (CUDA only; elsewhere a "needs CUDA" row). Every server gets the same
prompts (seeded per rate) and the same flags of the workload.
"""
from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager
from pathlib import Path

from .serve import run_serve_from_args

LAUNCHABLE = ("common", "common-thread", "vllm", "sglang")


def server_for(name: str, model: str, dtype: str = "bfloat16") -> AbstractContextManager:
    """A context manager that starts server `name` for `model` and yields an object with base_url.

    定义于 第10章 §10.5.5
    """
    if name in ("common", "common-thread"):
        from ..serve.launch import ServerProcess

        core = "thread" if name == "common-thread" else "process"
        return ServerProcess(model, dtype=dtype, engine_core=core)
    if name == "vllm":
        from ..peers.vllm_server import VLLMServer

        return VLLMServer(model, dtype=dtype)
    if name == "sglang":
        from ..peers.sglang_server import SGLangServer

        return SGLangServer(model)
    raise ValueError(f"unknown server {name!r}: choose from {', '.join(LAUNCHABLE)}")


def launch_and_serve(names: list[str], args) -> dict[str, dict]:
    """Run the workload of `args` (the serve flags) against each named server, one after another.
    A server that cannot start here (SGLang without CUDA) gets its reason instead of results.

    定义于 第10章 §10.5.5
    """
    from ..peers.sglang_server import unavailable_reason

    reports: dict[str, dict] = {}
    json_path, args.json = args.json, None          # one combined file, written below
    for name in names:
        if name == "sglang" and (reason := unavailable_reason()):
            reports[name] = {"server": {"name": name, "unavailable": reason}, "results": []}
            print(f"{name} {reason}")
            continue
        with server_for(name, args.model) as srv:
            reports[name] = run_serve_from_args(args, srv.base_url, args.model,
                                                server={"name": name, "startup_s": round(srv.startup_s, 1)})
    print_comparison(reports)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(reports, indent=1))
    return reports


def print_comparison(reports: dict[str, dict]) -> None:
    """p50 TTFT, p50 TPOT and output tok/s per rate, one column group per server, then each server's ratio
    to the first one (our server when it is listed first).

    定义于 第10章 §10.5.5
    """
    names = [n for n, r in reports.items() if r["results"]]
    if not names:
        return
    rates = [_rate(r["request_rate"]) for r in reports[names[0]]["results"]]
    print("\np50 TTFT ms / p50 TPOT ms / output tok/s per request rate (same prompts on every server)")
    print(f"{'rate':>5} " + " ".join(f"{n:>26s}" for n in names))
    for i, rate in enumerate(rates):
        row = [reports[n]["results"][i] for n in names]
        cells = [f"{r['ttft_ms']['p50']:8.0f} {r['tpot_ms']['p50']:8.1f} {r['output_tokens_per_s']:8.1f}" for r in row]
        print(f"{rate:>5} " + " ".join(f"{c:>26s}" for c in cells))
    base = names[0]
    for other in names[1:]:
        for i, rate in enumerate(rates):
            a, b = reports[base]["results"][i], reports[other]["results"][i]
            print(f"{base} vs {other} at rate {rate}: "
                  f"TTFT p50 {a['ttft_ms']['p50'] / b['ttft_ms']['p50']:.2f}x, "
                  f"TPOT p50 {a['tpot_ms']['p50'] / b['tpot_ms']['p50']:.2f}x, "
                  f"output tok/s {a['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}x  (< 1 is lower)")


def _rate(rate: float | str) -> str:
    return "inf" if rate == "inf" or (isinstance(rate, float) and not math.isfinite(rate)) else f"{float(rate):g}"
