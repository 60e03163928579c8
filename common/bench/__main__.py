"""python -m common.bench offline --engines common,hf,vllm --num-prompts 64 --input-len 64:256 \
    --output-len 64:256 --dtype bfloat16 --json out.json [--figure figures/bench_offline.png]
python -m common.bench serve --base-url URL | --launch common,vllm --model M --num-prompts N --request-rate 1,2,4 \
    --input-len 64:128 --output-len 32:64 [--slo-ttft-ms X --slo-tpot-ms Y] [--trace t.jsonl] --json out.json"""
from __future__ import annotations

import argparse
import sys

from .offline import DEFAULT_FIGURE, ENGINES, run_offline
from .serve_launch import LAUNCHABLE, launch_and_serve


def main(argv: list[str] | None = None) -> int:
    """Command line of `python -m common.bench offline|serve`: parse the flags and run that benchmark.

    定义于 第10章 §10.5.5
    """
    parser = argparse.ArgumentParser(prog="python -m common.bench")
    sub = parser.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="offline throughput: same random workload through each engine")
    off.add_argument("--engines", default="common,hf,hf-cb,vllm,sglang", help=f"comma list of {','.join(ENGINES)}")
    off.add_argument("--num-prompts", type=int, default=64)
    off.add_argument("--input-len", default="64:256")
    off.add_argument("--output-len", default="64:256")
    off.add_argument("--dtype", default="bfloat16")
    off.add_argument("--model", default="smollm2-135m")
    off.add_argument("--seed", type=int, default=0)
    off.add_argument("--hf-batch-size", type=int, default=16)
    off.add_argument("--json", default=None)
    off.add_argument("--figure", default=str(DEFAULT_FIGURE))
    off.add_argument("--no-fp32-check", action="store_true")
    srv = sub.add_parser("serve", help="online serving: streaming requests at Poisson request rates or a trace")
    srv.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000 (required without --launch)")
    srv.add_argument("--launch", default=None,
                     help=f"comma list of servers to start in turn for the same workload ({','.join(LAUNCHABLE)}; "
                          "sglang: CUDA only, elsewhere a 'needs CUDA' row); one table and one JSON for all")
    srv.add_argument("--model", required=True, help="served model name (also picks the vocabulary)")
    srv.add_argument("--num-prompts", type=int, default=32)
    srv.add_argument("--request-rate", default="1,2,4", help="req/s, comma list; inf = all at once")
    srv.add_argument("--input-len", default="64:128")
    srv.add_argument("--output-len", default="32:64")
    srv.add_argument("--vocab-size", type=int, default=None, help="default: the model's config")
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--trace", default=None, help="JSONL: timestamp, prompt_token_ids|prompt, output_len")
    srv.add_argument("--slo-ttft-ms", type=float, default=None)
    srv.add_argument("--slo-tpot-ms", type=float, default=None)
    srv.add_argument("--max-concurrency", type=int, default=None)
    srv.add_argument("--warmup", type=int, default=2, help="unmeasured short requests first")
    srv.add_argument("--per-request", action="store_true", help="also write every request's numbers")
    srv.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.mode == "serve" and args.launch:
        names = [n.strip() for n in args.launch.split(",") if n.strip()]
        if args.base_url:
            parser.error("--launch starts its own servers: leave out --base-url")
        if unknown := [n for n in names if n not in LAUNCHABLE]:
            parser.error(f"--launch: unknown server(s) {', '.join(unknown)}; choose from {', '.join(LAUNCHABLE)}")
        launch_and_serve(names, args)
        return 0
    if args.mode == "serve":
        from .serve import run_serve_from_args

        if not args.base_url:
            parser.error("serve needs --base-url (or --launch common,vllm,...)")
        run_serve_from_args(args, args.base_url, args.model)
        return 0
    run_offline([e.strip() for e in args.engines.split(",") if e.strip()], args.num_prompts, args.input_len,
                args.output_len, args.dtype, args.model, args.seed, args.json, args.figure,
                not args.no_fp32_check, args.hf_batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
