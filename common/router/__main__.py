"""python -m common.router --backends http://127.0.0.1:8001,http://127.0.0.1:8002 --policy prefix --port 8000"""
from __future__ import annotations

import argparse
import sys

from aiohttp import web

from .app import Router, RouterConfig
from .health import HealthConfig
from .policies import POLICIES


def main(argv: list[str] | None = None) -> int:
    """`python -m common.router`: start the router in front of the given replicas.

    定义于 第10章 §10.2
    """
    parser = argparse.ArgumentParser(prog="python -m common.router")
    parser.add_argument("--backends", required=True, help="comma list of replica base URLs")
    parser.add_argument("--policy", default="prefix", choices=POLICIES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--block-size", type=int, default=16, help="prefix policy: tokens (or bytes) per block")
    parser.add_argument("--balance-abs", type=int, default=8,
                        help="prefix policy: in-flight gap that overrides the cache")
    d, h = RouterConfig(), HealthConfig()
    parser.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s, help="seconds")
    parser.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                        help="seconds of silence between two chunks of a replica's answer")
    parser.add_argument("--total-timeout", type=float, default=d.total_timeout_s, help="seconds per upstream request")
    parser.add_argument("--max-retries", type=int, default=d.max_retries,
                        help="extra attempts on other replicas for a request that got no byte yet")
    parser.add_argument("--health-interval", type=float, default=h.interval_s, help="seconds between /health probes")
    parser.add_argument("--health-timeout", type=float, default=h.timeout_s, help="seconds per /health probe")
    parser.add_argument("--unhealthy-after", type=int, default=h.unhealthy_after,
                        help="failed probes in a row that eject a replica")
    parser.add_argument("--healthy-after", type=int, default=h.healthy_after,
                        help="good probes in a row that readmit it")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    kwargs = {"block_size": args.block_size, "balance_abs": args.balance_abs} if args.policy == "prefix" else {}
    try:
        health = HealthConfig(args.health_interval, args.health_timeout, args.unhealthy_after, args.healthy_after)
        config = RouterConfig(args.connect_timeout, args.read_timeout, args.total_timeout, args.max_retries, health)
        router = Router(backends, args.policy, config, **kwargs)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"router ({args.policy}) on http://{args.host}:{args.port} -> {', '.join(backends)}", flush=True)
    web.run_app(router.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
