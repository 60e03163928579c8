"""Prometheus metrics under vLLM's names (vllm/v1/metrics/loggers.py), so the same dashboards,
alerts and `common.bench.prom.scrape` work against our server and `vllm serve`.

The book invents names such as `llm_requests_total` / `gpu_memory_usage`; we only export what the
engine really measures, named as vLLM names the same quantity. Labels: model_name and engine
(vLLM's pair). Everything is fed on the server's event loop from the engine loop's messages
(common.serve.engine_loop): gauges and cumulative counters from each step's Snapshot, histograms from
each finished completion's FinishedStats, as vLLM's API process does with its EngineCore's stats.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

if TYPE_CHECKING:
    from .engine_loop import FinishedStats, Snapshot

# vLLM's buckets (seconds), shortened at the top: a CPU server is slow but not minutes-per-token slow
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort")
disable_created_metrics()   # no *_created series (vLLM does not export them either)


class EngineMetrics:
    """One registry per server (tests start several servers; the global registry would clash).

    定义于 第10章 §10.4
    """

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name, "engine": "0"}
        names = list(labels)
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=r).labels(**labels)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(**labels)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          names + ["finished_reason"], registry=r)
        self.success = {reason: success.labels(**labels, finished_reason=reason) for reason in FINISH_REASONS}
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.tpot = histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             E2E_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", E2E_BUCKETS)
        self._seen_queries = self._seen_hits = self._seen_preemptions = 0

    # ---- fed from the engine loop's messages -------------------------------------------------------
    def on_add(self, num_prompt_tokens: int) -> None:
        self.prompt_tokens.inc(num_prompt_tokens)

    def on_tokens(self, n: int) -> None:
        if n:
            self.generation_tokens.inc(n)

    def on_finish(self, stats: "FinishedStats") -> None:
        """A completion ended normally (stop/length); aborted ones are counted by `on_abort`."""
        self.success[stats.finish_reason if stats.finish_reason in self.success else "stop"].inc()
        times = stats.token_times
        if times:
            self.ttft.observe(times[0] - stats.arrival)
            for a, b in zip(times, times[1:]):
                self.itl.observe(b - a)
            if len(times) > 1:
                self.tpot.observe((times[-1] - times[0]) / (len(times) - 1))
        if stats.first_scheduled is not None:
            self.queue_time.observe(stats.first_scheduled - stats.arrival)
        if stats.finished_time is not None:
            self.e2e.observe(stats.finished_time - stats.arrival)

    def on_abort(self, num_seqs: int) -> None:
        self.success["abort"].inc(num_seqs)

    def on_step(self, snapshot: "Snapshot") -> None:
        self.running.set(snapshot.num_running)
        self.waiting.set(snapshot.num_waiting)
        self.kv_usage.set(snapshot.kv_usage)
        self.prefix_queries.inc(snapshot.prefix_queries - self._seen_queries)
        self.prefix_hits.inc(snapshot.prefix_hits - self._seen_hits)
        self.preemptions.inc(snapshot.num_preemptions - self._seen_preemptions)
        self._seen_queries, self._seen_hits = snapshot.prefix_queries, snapshot.prefix_hits
        self._seen_preemptions = snapshot.num_preemptions

    def render(self) -> bytes:
        return generate_latest(self.registry)
