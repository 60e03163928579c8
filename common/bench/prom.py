"""Read counters off a server's Prometheus /metrics (vLLM's names) without a Prometheus server."""
from __future__ import annotations

import urllib.request


def scrape(base_url: str, names: tuple[str, ...], timeout_s: float = 10) -> dict[str, float]:
    """Sum over all label sets of each metric `vllm:<name>` (or `vllm:<name>_total`, the counter
    spelling); a name the server does not export stays 0.0, listed in result["missing"].

    定义于 第10章 §10.4
    """
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    totals, seen = {n: 0.0 for n in names}, set()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        metric = line.split("{")[0].split()[0]
        for n in names:
            if metric in (f"vllm:{n}_total", f"vllm:{n}"):
                totals[n] += float(line.rsplit(None, 1)[-1])
                seen.add(n)
    return totals | {"missing": sorted(set(names) - seen)}


def delta(after: dict, before: dict) -> dict[str, float]:
    """after - before for every numeric entry (counters over one benchmark run).

    定义于 第10章 §10.4
    """
    return {k: after[k] - before.get(k, 0.0) for k in after if isinstance(after[k], float)}
