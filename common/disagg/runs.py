"""Run one timed workload disaggregated (two pinned worker processes) or colocated (`common.engine.LLM`),
and summarise both the same way: TTFT, the gaps between decode tokens (TPOT), goodput under an SLO.

Arrival times are offsets from the start of the run; the driver submits each request when its time comes,
so long prompts land while other requests are decoding, the situation PD disaggregation is built for.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass, field

import numpy as np

from ..device import parse_dtype
from ..engine import LLM, SamplingParams
from .transfer import SharedKVPool
from .workers import decode_worker, prefill_worker


@dataclass(frozen=True)
class TimedRequest:
    """One request of a timed workload: its prompt, output budget and arrival offset.

    定义于 第7章 §7.7.7
    """
    request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    arrival_s: float = 0.0     # offset from the start of the run


@dataclass
class RequestResult:
    """What a request produced and when: tokens plus the times behind TTFT and TPOT.

    定义于 第7章 §7.7.7
    """
    request_id: str
    prompt_len: int
    token_ids: list[int]
    arrival: float                        # absolute time.perf_counter()
    token_times: list[float]              # absolute; token_times[0] is the first token
    kv_bytes: int = 0                     # disaggregated only: K/V shipped
    write_s: float = 0.0                  # prefill side: K/V into the shared pool
    read_s: float = 0.0                   # decode side: K/V out of the pool
    handoff_s: float = 0.0                # header sent -> K/V adopted (includes waiting for a decode step to end)
    extra: dict = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def gaps(self) -> np.ndarray:
        """Seconds between consecutive output tokens (what a streaming client sees as TPOT/ITL)."""
        return np.diff(np.asarray(self.token_times))


def _check_workload(workload: list[TimedRequest]) -> None:
    if not workload:
        raise ValueError("the workload is empty")
    ids = [r.request_id for r in workload]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique")
    for r in workload:
        if not r.prompt_ids or r.max_tokens < 1 or r.arrival_s < 0:
            raise ValueError(f"request {r.request_id!r}: needs a prompt, max_tokens >= 1 and arrival_s >= 0")


def _cores() -> list[int | None]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [cores[0], cores[1 % len(cores)]] if cores else [None, None]


def run_disaggregated(model_name: str, workload: list[TimedRequest], dtype: str = "float32", *, fuse: bool = True,
                      num_blocks: int = 256, block_size: int = 16, ignore_eos: bool = False,
                      timeout_s: float = 600.0) -> list[RequestResult]:
    """Prefill worker on one core, decode worker on the other, K/V through a shared-memory block pool.
    Greedy; returns one result per request, in workload order.

    定义于 第7章 §7.7.7
    """
    from ..models import load_config
    _check_workload(workload)
    config = load_config(model_name)
    longest = max((len(r.prompt_ids) for r in workload), default=0)
    if -(-longest // block_size) > num_blocks:
        raise ValueError(f"a prompt of {longest} tokens needs {-(-longest // block_size)} blocks of {block_size}; "
                         f"the pool has num_blocks={num_blocks}")
    pool = SharedKVPool(config, num_blocks, block_size, parse_dtype(dtype))
    ctx = mp.get_context("spawn")
    to_prefill, to_decode, freed, results, ready = (ctx.Queue() for _ in range(5))
    prefill_core, decode_core = _cores()
    workers = [
        ctx.Process(target=prefill_worker, name="prefill", daemon=True,
                    args=(prefill_core, model_name, dtype, fuse, pool.spec(), max(longest, 1), to_prefill, to_decode,
                          freed, ready)),
        ctx.Process(target=decode_worker, name="decode", daemon=True,
                    args=(decode_core, model_name, dtype, fuse, pool.spec(), to_decode, freed, results, ready,
                          None if ignore_eos else config.eos_token_id)),
    ]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            _get(ready, workers, timeout_s)
        start = time.perf_counter()
        for req in sorted(workload, key=lambda r: r.arrival_s):
            time.sleep(max(0.0, start + req.arrival_s - time.perf_counter()))
            to_prefill.put((req.request_id, list(req.prompt_ids), req.max_tokens, time.perf_counter()))
        to_prefill.put(None)
        by_id = {}
        for _ in workload:
            raw = _get(results, workers, timeout_s)
            by_id[raw["request_id"]] = RequestResult(**raw)
        for w in workers:
            w.join(timeout=30)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
        pool.close(unlink=True)
    bad = [w.name for w in workers if w.exitcode not in (0, None)]
    if bad:
        raise RuntimeError(f"worker(s) {bad} failed")
    return [by_id[r.request_id] for r in workload]


def _get(q, workers: list, timeout_s: float):
    """q.get(), but fail fast with a clear error when a worker has died instead of waiting out the timeout."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            dead = [f"{w.name} (exit code {w.exitcode})" for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"disaggregated worker(s) died: {', '.join(dead)}") from None
    raise TimeoutError(f"no message from the workers within {timeout_s:.0f} s")


def run_colocated(llm: LLM, workload: list[TimedRequest], ignore_eos: bool = False) -> list[RequestResult]:
    """The same workload on one engine (prefill and decode share every step), driven step by step:
    a request joins the engine once its arrival time has passed. Greedy, like the workers.

    定义于 第7章 §7.7.7
    """
    _check_workload(workload)
    pending = sorted(workload, key=lambda r: r.arrival_s)
    seqs = {}
    start = time.perf_counter()
    while pending or llm.has_unfinished_requests():
        now = time.perf_counter()
        while pending and start + pending[0].arrival_s <= now:
            req = pending.pop(0)
            llm.add_request(list(req.prompt_ids), SamplingParams(temperature=0.0, max_tokens=req.max_tokens,
                                                                         ignore_eos=ignore_eos),
                            request_id=req.request_id, arrival=now)
            seqs[req.request_id] = llm.sequences(req.request_id)[0]
        if llm.has_unfinished_requests():
            llm.step()
        elif pending:
            time.sleep(max(0.0, start + pending[0].arrival_s - time.perf_counter()))
    for request_id in seqs:
        llm.abort(request_id)   # forget the finished requests' bookkeeping
    return [RequestResult(r.request_id, len(r.prompt_ids), list(seqs[r.request_id].output_ids),
                          seqs[r.request_id].arrival, list(seqs[r.request_id].token_times)) for r in workload]


def summarize(results: list[RequestResult], slo_ttft_s: float, slo_tpot_s: float) -> dict:
    """TTFT and inter-token-gap percentiles over every request; goodput = share (and rate) of requests whose
    TTFT and mean TPOT both meet the SLO (DistServe's definition, per request).

    定义于 第7章 §7.7.7
    """
    gaps = np.concatenate([r.gaps for r in results if len(r.token_times) > 1])
    ttft = np.array([r.ttft for r in results])
    tpot = np.array([r.gaps.mean() if len(r.token_times) > 1 else 0.0 for r in results])
    ok = (ttft <= slo_ttft_s) & (tpot <= slo_tpot_s)
    span = max(r.token_times[-1] for r in results) - min(r.arrival for r in results)
    return {"ttft_p50": float(np.percentile(ttft, 50)), "ttft_p99": float(np.percentile(ttft, 99)),
            "ttft_max": float(ttft.max()), "tpot_p50": float(np.percentile(gaps, 50)),
            "tpot_p99": float(np.percentile(gaps, 99)), "tpot_max": float(gaps.max()),
            "goodput_share": float(ok.mean()), "goodput_rps": float(ok.sum() / span), "span_s": float(span)}
