"""The routing experiment of chapter 10: a multi-turn trace through a router in front of replicas.

Each conversation's turn k+1 prompt is turn k's prompt plus an assistant reply and a new user
message, so a replica that served turn k holds most of turn k+1's prefix in its prefix cache, if
the router sends the turn there. We measure what the replicas report (vLLM metric names:
prefix_cache_hits / prefix_cache_queries, in tokens) and the TTFT the client sees, per policy.
Prompts are text (not token ids): sglang-router only accepts string prompts.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from ..bench.prom import delta, scrape
from ..bench.serve import ServeRequest, run_requests, run_sync, summarize_run
from ..peers.process import ManagedServer, free_port

WORDS = ("the model reads a long document about inference caches and answers questions on latency "
         "throughput memory blocks tokens prefill decode batch queue replica router session prefix "
         "hash tree scheduler kernel attention weights budget request stream server metric cost "
         "deploy scale load user agent tool result context window turn reply summary plan step").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def multi_turn_trace(conversations: int = 5, turns: int = 4, seed: int = 0, system_words: int = 300,
                     user_words: int = 30, reply_words: int = 20, gap_s: float = 2.0, stagger_s: float = 0.3,
                     output_len: int = 16) -> list[ServeRequest]:
    """Conversations start `stagger_s` apart; turn k of each is sent `gap_s` after turn k-1, with
    the previous prompt + a reply + a new user message as its prompt and the conversation id as
    its session. A different seed gives the same shape with new text (no cache carry-over).

    定义于 第10章 §10.2
    """
    if conversations < 1 or turns < 1:
        raise ValueError("need at least one conversation and one turn")
    rng = random.Random(seed)
    out = []
    for c in range(conversations):
        prompt = f"System: conversation {seed}-{c}. {_text(rng, system_words)}\n"
        for t in range(turns):
            if t:
                prompt += f"Assistant: {_text(rng, reply_words)}\n"
            prompt += f"User: {_text(rng, user_words)}\nAssistant:"
            out.append(ServeRequest(c * stagger_s + t * gap_s, prompt, output_len, user=f"conv-{seed}-{c}"))
            prompt = prompt[: -len("Assistant:")]
    return sorted(out, key=lambda r: r.arrival_s)


def run_trace_through(url: str, model: str, requests: list[ServeRequest], replicas: list[str]) -> dict:
    """Replay `requests` against `url`; return the summary plus the replicas' prefix-cache hit rate
    over this run and TTFT of the first turns vs the later turns.

    定义于 第10章 §10.2
    """
    names = ("prefix_cache_queries", "prefix_cache_hits")
    before = [scrape(r, names) for r in replicas]
    done, wall = run_sync(run_requests(url, model, requests, progress=False))
    counts = [delta(scrape(r, names), b) for r, b in zip(replicas, before)]
    summary = summarize_run(done, wall, len(requests) / max(r.arrival_s for r in requests))
    queries = [c["prefix_cache_queries"] for c in counts]
    hits = [c["prefix_cache_hits"] for c in counts]
    first_turn = {r.user: min(q.arrival_s for q in requests if q.user == r.user) for r in requests}
    later = [res.ttft_s * 1e3 for res, req in zip(done, requests) if res.ok and req.arrival_s > first_turn[req.user]]
    first = [res.ttft_s * 1e3 for res, req in zip(done, requests) if res.ok and req.arrival_s == first_turn[req.user]]
    return summary | {"queries_per_replica": queries, "hits_per_replica": hits,
                      "hit_rate": sum(hits) / sum(queries) if sum(queries) else 0.0,
                      "ttft_first_turn_ms": sum(first) / len(first) if first else None,
                      "ttft_later_turns_ms": sum(later) / len(later) if later else None}


class RouterServer(ManagedServer):
    """`python -m common.router` in a child process on a free port. Keyword options become flags
    (health_interval=0.25 → --health-interval 0.25).

    定义于 第10章 §10.2
    """

    def __init__(self, backends: list[str], policy: str, block_size: int = 16, log_dir: str | Path | None = None,
                 **options: float | int | str):
        self.port = free_port()
        args = [sys.executable, "-m", "common.router", "--backends", ",".join(backends), "--policy", policy,
                "--port", str(self.port), "--block-size", str(block_size)]
        for key, value in options.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        log = Path(log_dir) / f"router-{policy}.log" if log_dir else None
        super().__init__(args, f"http://127.0.0.1:{self.port}", "/health", None, log, 60, f"router {policy}")


class SGLangRouter(ManagedServer):
    """sglang-router (Rust, `python -m sglang_router.launch_router`) in its default mode.

    定义于 第10章 §10.2
    """

    def __init__(self, backends: list[str], policy: str = "cache_aware", log_dir: str | Path | None = None,
                 extra_args: list[str] | None = None):
        self.port = free_port()
        args = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *backends,
                "--policy", policy, "--host", "127.0.0.1", "--port", str(self.port),
                "--prometheus-port", str(free_port()), "--log-level", "warn", *(extra_args or [])]
        log = Path(log_dir) / f"sglang-router-{policy}.log" if log_dir else None
        super().__init__(args, f"http://127.0.0.1:{self.port}", "/health", None, log, 60, "sglang-router")
