"""python -m common.router --backends http://127.0.0.1:8001,http://127.0.0.1:8002 --policy prefix --port 8000"""
from __future__ import annotations

import argparse
import sys

from aiohttp import web

from .app import Router
from .policies import POLICIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.router")
    parser.add_argument("--backends", required=True, help="comma list of replica base URLs")
    parser.add_argument("--policy", default="prefix", choices=POLICIES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--block-size", type=int, default=16, help="prefix policy: tokens (or bytes) per block")
    parser.add_argument("--balance-abs", type=int, default=8,
                        help="prefix policy: in-flight gap that overrides the cache")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    kwargs = {"block_size": args.block_size, "balance_abs": args.balance_abs} if args.policy == "prefix" else {}
    router = Router(backends, args.policy, **kwargs)
    print(f"router ({args.policy}) on http://{args.host}:{args.port} -> {', '.join(backends)}", flush=True)
    web.run_app(router.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
