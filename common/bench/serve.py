"""Online serving benchmark: streaming /v1/completions requests sent on a schedule.

Requests arrive as a Poisson process at each request rate (seeded, so both servers see the same
arrival times) or at the times of a replayed trace. Per request we measure TTFT, TPOT, ITL and
e2e latency (common.bench.serve_client); per rate we report p50/p90/p99, request and output-token
throughput and goodput (requests per second that met the TTFT/TPOT SLO). `python -m common.bench
serve` is the command-line face of `run_serve`; the JSON layout is
{"server": {...}, "workload": {...}, "results": [{"request_rate", "completed", "failed", "ttft_ms",
"tpot_ms", "itl_ms", "e2e_ms", "output_tokens_per_s", "requests_per_s", "goodput_requests_per_s"}],
"load": {"start": {...}, "end": {...}}} — the machine's load average before and after the run, printed
beside the table with a WARNING when other work competed for the CPU (common.bench.loadinfo).

The progress bar is `tqdm.auto` (a widget in Jupyter, a text bar in a terminal), created in the
caller's thread; `progress=False` turns it off.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .loadinfo import load_block, load_snapshot
from .metrics import percentile
from .serve_client import RequestResult, completion_payload, stream_completion
from .workload import make_workload

QUANTILES = (50, 90, 99)


@dataclass
class ServeRequest:
    """One request of a serving run: when to send it (seconds after the start) and what.

    定义于 第10章 §10.5.5
    """
    arrival_s: float
    prompt: list[int] | str
    output_len: int
    user: str | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)


def parse_rates(text: str | float | list) -> list[float]:
    """"1,2,inf" → [1.0, 2.0, inf]; a rate must be positive (inf = send everything at once).

    定义于 第10章 §10.5.5
    """
    items = text if isinstance(text, list) else str(text).split(",")
    rates = [float(r) for r in items if str(r).strip()]
    if not rates or any(not r > 0 for r in rates):
        raise ValueError(f"request rates must be positive numbers or inf, got {text!r}")
    return rates


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Send times of `n` requests of a Poisson process at `rate` req/s (first at 0); all 0 for inf.

    定义于 第10章 §10.5.5
    """
    if n < 1:
        raise ValueError(f"need at least one request, got {n}")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    times, t = [0.0], 0.0
    for _ in range(n - 1):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def random_requests(num_prompts: int, input_len, output_len, vocab_size: int, rate: float,
                    seed: int = 0) -> list[ServeRequest]:
    """The offline benchmark's random-token workload (same seed → same prompts) on Poisson times.

    定义于 第10章 §10.5.5
    """
    work = make_workload(num_prompts, input_len, output_len, vocab_size, seed)
    times = poisson_arrivals(num_prompts, rate, seed)
    return [ServeRequest(t, p, n) for t, p, n in zip(times, work.prompts, work.output_lens)]


def load_trace(path: str | Path) -> list[ServeRequest]:
    """A JSONL trace: one request per line with "timestamp" (s), "prompt_token_ids" or "prompt",
    "output_len" and optionally "session_id" (sent as the OpenAI `user` field).

    定义于 第10章 §10.5.5
    """
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("prompt_token_ids", row.get("prompt"))
        if prompt is None or "timestamp" not in row or "output_len" not in row:
            raise ValueError(f"{path}:{lineno}: need timestamp, prompt_token_ids|prompt and output_len")
        if int(row["output_len"]) < 1:
            raise ValueError(f"{path}:{lineno}: output_len must be >= 1")
        rows.append(ServeRequest(float(row["timestamp"]), prompt, int(row["output_len"]), row.get("session_id")))
    if not rows:
        raise ValueError(f"{path}: empty trace")
    start = min(r.arrival_s for r in rows)
    return sorted((ServeRequest(r.arrival_s - start, r.prompt, r.output_len, r.user) for r in rows),
                  key=lambda r: r.arrival_s)


def _quantiles_ms(values_s: list[float]) -> dict:
    return {f"p{q}": (None if not values_s else percentile(values_s, q) * 1e3) for q in QUANTILES} | {
        "mean": None if not values_s else 1e3 * sum(values_s) / len(values_s)}


def request_rows(results: list[RequestResult]) -> list[dict]:
    """Per-request numbers (ms) of the completed requests, for plots and per-request checks.

    定义于 第10章 §10.5.5
    """
    return [{"index": r.index, "start_s": r.start_s, "prompt_len": r.prompt_len, "output_tokens": r.output_tokens,
             "ttft_ms": r.ttft_s * 1e3, "e2e_ms": r.e2e_s * 1e3,
             "tpot_ms": None if r.tpot_s is None else r.tpot_s * 1e3} for r in results if r.ok]


def summarize_run(results: list[RequestResult], duration_s: float, request_rate: float,
                  slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> dict:
    """Percentiles over completed requests, throughput over the run's wall time, goodput = completed
    requests meeting every given SLO per second; failed requests listed with their errors.

    定义于 第10章 §10.5.5
    """
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]

    def meets_slo(r: RequestResult) -> bool:
        if slo_ttft_ms is not None and r.ttft_s * 1e3 > slo_ttft_ms:
            return False
        if slo_tpot_ms is not None and r.tpot_s is not None and r.tpot_s * 1e3 > slo_tpot_ms:
            return False
        return True

    good = [r for r in ok if meets_slo(r)]
    out_tokens = sum(r.output_tokens for r in ok)
    return {
        "request_rate": request_rate if math.isfinite(request_rate) else "inf",
        "completed": len(ok), "failed": len(failed),
        "errors": [{"index": r.index, "error": r.error} for r in failed],
        "duration_s": duration_s,
        "ttft_ms": _quantiles_ms([r.ttft_s for r in ok]),
        "tpot_ms": _quantiles_ms(tpots),
        "itl_ms": _quantiles_ms([x for r in ok for x in r.itl_s]),
        "e2e_ms": _quantiles_ms([r.e2e_s for r in ok]),
        "input_tokens": sum(r.prompt_len for r in ok),
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / duration_s,
        "requests_per_s": len(ok) / duration_s,
        "goodput_requests_per_s": len(good) / duration_s,
        "slo_met": len(good),
    }


def progress_bar(total: int, desc: str = "requests", progress: bool = True):
    """A `tqdm.auto` bar (a widget in Jupyter); create it in the caller's thread, not in a worker.

    定义于 第10章 §10.5.5
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=2.0)


async def run_requests(base_url: str, model: str, requests: list[ServeRequest], max_concurrency: int | None = None,
                       timeout_s: float = 600, progress: bool = True, desc: str = "",
                       bar=None) -> tuple[list[RequestResult], float]:
    """Send each request at its arrival time (concurrently), return (results in order, wall seconds
    from the first send to the last completion). `bar`: a progress bar to update (default: a new
    `progress_bar`, unless `progress` is False).

    定义于 第10章 §10.5.5
    """
    url = base_url.rstrip("/") + "/v1/completions"
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = bar if bar is not None else progress_bar(len(requests), desc or "requests", progress)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()

        async def one(i: int, req: ServeRequest) -> RequestResult:
            delay = req.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            result = RequestResult(i, req.prompt_len, req.output_len)
            body = completion_payload(model, req.prompt, req.output_len, req.user)
            if limit is None:
                await stream_completion(session, url, body, result, t0)
            else:
                async with limit:
                    await stream_completion(session, url, body, result, t0)
            bar.update(1)
            return result

        results = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        wall = time.perf_counter() - t0
    bar.close()
    return list(results), wall


def run_sync(coro):
    """asyncio.run, also from inside a running loop (a Jupyter kernel): then in a worker thread.

    定义于 第10章 §10.5.5
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def warm_up(base_url: str, model: str, requests: int = 2) -> None:
    """Send `requests` short unmeasured requests: the first ones pay for lazy initialisation
    (compilation, allocations), which no measurement should count.

    定义于 第10章 §10.5.5
    """
    if requests:
        warm = [ServeRequest(0.0, [7 + i] * 16, 4) for i in range(requests)]
        run_sync(run_requests(base_url, model, warm, progress=False))


def run_serve(base_url: str, model: str, request_rates: list[float] | str, *, num_prompts: int = 32,
              input_len="64:128", output_len="32:64", vocab_size: int | None = None, seed: int = 0,
              trace: str | Path | None = None, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
              max_concurrency: int | None = None, server: dict | None = None, json_path: str | Path | None = None,
              warmup: int = 2, per_request: bool = False, progress: bool = True, print_results: bool = True) -> dict:
    """Run the workload at every request rate (or replay `trace` once) against `base_url`, after
    `warmup` short unmeasured requests; returns (and optionally writes) the benchmark JSON
    (with `per_request`, each result also lists its completed requests under "requests").

    定义于 第10章 §10.5.5
    """
    if trace is not None:
        requests = load_trace(trace)
        span = max(r.arrival_s for r in requests)
        plans = [(len(requests) / span if span > 0 else math.inf, requests)]
        workload = {"trace": str(trace), "num_prompts": len(requests),
                    "num_input_tokens": sum(r.prompt_len for r in requests),
                    "num_output_tokens": sum(r.output_len for r in requests)}
    else:
        if vocab_size is None:
            from ..models import load_config

            vocab_size = load_config(model).vocab_size
        rates = parse_rates(request_rates)
        # a fresh prompt set per rate (seed + i): the same prompts again would hit the prefix cache
        plans = [(rate, random_requests(num_prompts, input_len, output_len, vocab_size, rate, seed + i))
                 for i, rate in enumerate(rates)]
        work = make_workload(num_prompts, input_len, output_len, vocab_size, seed)
        workload = work.describe() | {"arrivals": "poisson", "seeds": [seed + i for i in range(len(rates))],
                                      "request_rates": [r if math.isfinite(r) else "inf" for r in rates]}
    workload |= {"slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms, "max_concurrency": max_concurrency,
                 "warmup_requests": warmup}
    load_start = load_snapshot("start")
    warm_up(base_url, model, warmup)
    results = []
    for rate, reqs in plans:
        bar = progress_bar(len(reqs), f"rate {rate:g}", progress)  # here: run_sync may use a worker thread
        done, wall = run_sync(run_requests(base_url, model, reqs, max_concurrency, bar=bar))
        results.append(summarize_run(done, wall, rate, slo_ttft_ms, slo_tpot_ms))
        if per_request:
            results[-1]["requests"] = request_rows(done)
    report = {"server": {"base_url": base_url, "model": model, **(server or {})}, "workload": workload,
              "results": results, "load": {"start": load_start, "end": load_snapshot("end")}}
    if print_results:
        print_table(report)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1))
    return report


def run_serve_from_args(args, base_url: str, model: str, server: dict | None = None) -> dict:
    """`run_serve` with the workload flags of `python -m common.bench serve` (one place for both launch paths).

    定义于 第10章 §10.5.5
    """
    return run_serve(base_url, model, args.request_rate, num_prompts=args.num_prompts, input_len=args.input_len,
                     output_len=args.output_len, vocab_size=args.vocab_size, seed=args.seed, trace=args.trace,
                     slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms,
                     max_concurrency=args.max_concurrency, warmup=args.warmup, per_request=args.per_request,
                     server=server, json_path=args.json)


def print_table(report: dict) -> None:
    """One line per request rate: counts, throughput, goodput, TTFT/TPOT/ITL/e2e percentiles.

    定义于 第10章 §10.5.5
    """
    def ms(d: dict, q: str) -> str:
        return "-" if d.get(q) is None else f"{d[q]:.0f}" if d[q] >= 100 else f"{d[q]:.1f}"

    heads = ["rate", "ok", "fail", "req/s", "tok/s", "good/s", "TTFT50", "TTFT99", "TPOT50", "TPOT99",
             "ITL50", "ITL99", "E2E50", "E2E99"]
    name = report["server"].get("name", report["server"]["base_url"])
    print(f"server {name}  (latencies in ms)")
    print(" ".join(f"{h:>7s}" for h in heads))
    for r in report["results"]:
        cells = [str(r["request_rate"]), str(r["completed"]), str(r["failed"]), f"{r['requests_per_s']:.2f}",
                 f"{r['output_tokens_per_s']:.1f}", f"{r['goodput_requests_per_s']:.2f}",
                 ms(r["ttft_ms"], "p50"), ms(r["ttft_ms"], "p99"), ms(r["tpot_ms"], "p50"), ms(r["tpot_ms"], "p99"),
                 ms(r["itl_ms"], "p50"), ms(r["itl_ms"], "p99"), ms(r["e2e_ms"], "p50"), ms(r["e2e_ms"], "p99")]
        print(" ".join(f"{c:>7s}" for c in cells))
        for err in r["errors"][:3]:
            print(f"    failed request {err['index']}: {err['error']}")
    if "load" in report:
        print(load_block(report["load"]["start"], report["load"]["end"], prefix="[serve]"))
