"""The cache-aware router: policies on known inputs, then the proxy on loopback replicas."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from common.bench.serve import run_serve
from common.router import PrefixAware, RoundRobin, SessionSticky, make_policy, routing_key
from common.router.policies import block_hashes, least_loaded, stable_hash
from fake_openai_server import FakeServer, free_port


def test_round_robin_cycles():
    rr = RoundRobin(3)
    assert [rr.choose([1], None, [0, 0, 0]) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_session_sticky_is_stable_across_processes():
    s = SessionSticky(4)
    picks = {u: s.choose([1], u, [0] * 4) for u in ("alice", "bob", "carol", "dave", "erin")}
    assert all(s.choose([9, 9], u, [5, 0, 0, 0]) == i for u, i in picks.items())  # load does not matter
    code = "from common.router.policies import stable_hash; print(stable_hash('alice'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(__import__("common").__path__[0] + "/.."))
    assert int(other.stdout) == stable_hash("alice")
    assert SessionSticky(2).choose([1], None, [0, 0]) == 0  # no session: round-robin fallback


def test_block_hashes_chain_prefixes():
    a, b = block_hashes(list(range(10)), 4), block_hashes(list(range(8)) + [99, 98, 97], 4)
    assert len(a) == 2 and a == b[:2]  # only full blocks; same prefix → same hashes
    c = block_hashes([0, 1, 2, 3, 5, 5, 6, 7], 4)
    assert c[0] == a[0] and c[1] != a[1]
    assert block_hashes([1, 2, 3], 4) == []
    assert block_hashes([5, 6, 7, 8, 1, 2, 3, 4], 4)[1] != block_hashes([1, 2, 3, 4], 4)[0]  # position matters


def test_prefix_aware_follows_the_longest_prefix_and_balances_load():
    p = PrefixAware(2, block_size=4, balance_abs=3)
    conv_a, conv_b = list(range(100, 116)), list(range(200, 216))
    first_a = p.choose(conv_a, None, [0, 0])
    first_b = p.choose(conv_b, None, [1, 0] if first_a == 0 else [0, 1])  # load sends b elsewhere
    assert first_a != first_b
    assert p.choose(conv_a + [7] * 8, None, [0, 0]) == first_a  # next turn extends the prefix
    assert p.choose(conv_b + [8] * 8, None, [0, 0]) == first_b
    busy = [0, 0]
    busy[first_a] = 5
    assert p.choose(conv_a + [7] * 12, None, busy) != first_a  # overloaded: load wins
    assert p.decisions["cache"] == 2 and p.decisions["load"] == 3
    assert least_loaded([3, 1, 1], start=2) == 2


def test_bad_inputs():
    with pytest.raises(ValueError):
        make_policy("random", 2)
    with pytest.raises(ValueError):
        RoundRobin(0)
    with pytest.raises(ValueError):
        routing_key("/v1/completions", {"prompt": 3})
    assert routing_key("/v1/completions", {"prompt": "ab"}) == [97, 98]
    assert routing_key("/v1/completions", {"prompt": [5, 6]}) == [5, 6]
    assert routing_key("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) == list(b"user:hi\n")


def _multi_turn_trace(path, conversations: int = 3, turns: int = 3) -> None:
    rows = []
    for c in range(conversations):
        prompt = [20 + c] * 16
        for t in range(turns):
            prompt = prompt + [50 + t] * 8
            rows.append({"timestamp": t * 0.15 + c * 0.02, "prompt_token_ids": prompt, "output_len": 3,
                         "session_id": f"conv{c}"})
    path.write_text("\n".join(json.dumps(r) for r in rows))


@pytest.mark.parametrize("policy", ["round_robin", "session", "prefix"])
def test_router_proxies_streams_and_routes(tmp_path, policy):
    trace = tmp_path / "trace.jsonl"
    _multi_turn_trace(trace)
    with FakeServer() as a, FakeServer() as b:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "common.router", "--backends", f"{a.base_url},{b.base_url}",
                                 "--policy", policy, "--port", str(port), "--block-size", "4"])
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    urllib.request.urlopen(url + "/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            report = run_serve(url, "fake", "1", trace=trace, warmup=0, progress=False, print_results=False)
            stats = json.loads(urllib.request.urlopen(url + "/router/stats").read())
        finally:
            proc.terminate()
            proc.wait(10)
        hits, queries = a.hits + b.hits, a.queries + b.queries
    (r,) = report["results"]
    assert r["completed"] == 9 and r["failed"] == 0 and r["output_tokens"] == 27
    assert sum(stats["routed"]) == 9 and stats["in_flight"] == [0, 0]
    assert queries == (24 + 32 + 40) * 3
    # 3 conversations x 3 turns (an odd count, so round-robin cannot line up with the conversations);
    # turn t's prompt = 16 + 8 (t + 1) tokens and turns 2 and 3 could reuse 24 and 32 of them
    if policy == "round_robin":
        assert hits < (24 + 32) * 3  # turns alternate replicas: some find nothing
    else:
        assert hits == (24 + 32) * 3


def test_prefix_routing_in_front_of_two_tiny_replicas_of_our_server(tmp_path):
    """Real engines: every later turn must find its prefix on the replica the router picked."""
    from common.router.experiment import RouterServer, multi_turn_trace, run_trace_through
    from common.serve.launch import ServerProcess

    trace = multi_turn_trace(3, 3, seed=1, system_words=60, user_words=10, reply_words=5, gap_s=0.6,
                             stagger_s=0.1, output_len=4)
    with ServerProcess("tiny", dtype="float32", block_size=16) as a, ServerProcess("tiny", dtype="float32",
                                                                                     block_size=16) as b:
        with RouterServer([a.base_url, b.base_url], "prefix", log_dir=tmp_path) as router:
            result = run_trace_through(router.base_url, "tiny", trace, [a.base_url, b.base_url])
            stats = json.loads(urllib.request.urlopen(router.base_url + "/router/stats").read())
    assert result["completed"] == 9 and result["failed"] == 0
    assert sum(stats["routed"]) == 9 and min(stats["routed"]) >= 3  # both replicas used
    assert stats["decisions"]["cache"] == 6  # turns 2 and 3 of each conversation followed their prefix
    assert result["hit_rate"] > 0.4 and min(result["hits_per_replica"]) > 0
