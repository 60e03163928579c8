"""python -m common.bench offline --engines common,hf,vllm --num-prompts 64 --input-len 64:256 \
    --output-len 64:256 --dtype bfloat16 --json out.json [--figure figures/bench_offline.png]"""
from __future__ import annotations

import argparse
import sys

from .offline import DEFAULT_FIGURE, ENGINES, run_offline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.bench")
    sub = parser.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="offline throughput: same random workload through each engine")
    off.add_argument("--engines", default="common,hf,hf-cb,vllm", help=f"comma list of {','.join(ENGINES)}")
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
    args = parser.parse_args(argv)
    run_offline([e.strip() for e in args.engines.split(",") if e.strip()], args.num_prompts, args.input_len,
                args.output_len, args.dtype, args.model, args.seed, args.json, args.figure,
                not args.no_fp32_check, args.hf_batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
