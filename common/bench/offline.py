"""`run_offline(...)`: the same random workload through our engine, transformers and vLLM;
prints a table with the machine's load at the start and end of the run (and a WARNING when other
work competed for the CPU), writes JSON ("machine" → "load"), draws figures/bench_offline.png.
`python -m common.bench offline` is the command-line face of this function."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from ..device import parse_dtype
from ..hardware.machine import measure_peaks
from ..models import load_config, load_model
from ..paths import FIGURES_DIR
from .engines import guarded, run_common, run_hf, run_hf_continuous, run_llama_cpp_peer, run_vllm_peer
from .engines import run_common_int4  # our engine on INT4 weights (common.quant.int4pack)
from .loadinfo import load_block, load_line, load_snapshot
from .metrics import identical_fraction, weights_bytes, workload_roofline
from .workload import Workload, make_workload
from .engines import B1_NEW_TOKENS, _b1_prompt  # the sglang row runs the same batch-1 jobs
from .sglang_peer import run_sglang_peer

# sglang: CUDA only, a "needs CUDA" row elsewhere; common-int4: our engine on INT4 weights
ENGINES = ("common", "hf", "hf-cb", "vllm", "llama.cpp", "sglang", "common-int4")


def fp32_exactness(model: str, num_prompts: int = 8, seed: int = 1) -> dict:
    """Our engine in fp32 (ragged batches, chunked prefill) against transformers' greedy
    generate run one request at a time: token-for-token equality on every request.

    定义于 第10章 §10.5.5
    """
    from ..engine import LLM, SamplingParams
    from .engines import _hf_generate
    from ..models import load_hf_model

    work = make_workload(num_prompts, "16:96", "8:32", load_config(model).vocab_size, seed)
    llm = LLM(model, dtype="float32", max_num_batched_tokens=64, kv_cache_memory=256 << 20)
    ours = [o.outputs[0].token_ids for o in llm.generate(
        work.prompts, [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in work.output_lens],
        use_tqdm=False)]
    hf = load_hf_model(model, torch.float32)
    with torch.inference_mode():
        ref = [_hf_generate(hf, [p], n)[0].tolist() for p, n in zip(work.prompts, work.output_lens)]
    same = [a == b for a, b in zip(ours, ref)]
    return {"requests": len(same), "identical": sum(same), "all_identical": all(same),
            "workload": work.describe()}


def print_table(results: list[dict]) -> None:
    """One row per engine: throughput and latency percentiles side by side.

    定义于 第10章 §10.5.5
    """
    cols = [("engine", "{}"), ("requests_per_s", "{:.2f}"), ("output_tokens_per_s", "{:.1f}"),
            ("total_tokens_per_s", "{:.1f}"), ("ttft_p50_ms", "{:.0f}"), ("ttft_p99_ms", "{:.0f}"),
            ("tpot_p50_ms", "{:.1f}"), ("tpot_p99_ms", "{:.1f}"), ("decode_latency_ms_b1", "{:.1f}")]
    heads = ["engine", "req/s", "out tok/s", "total tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
             "b1 ms/tok"]
    print(" ".join(f"{h:>12s}" for h in heads))
    for r in results:
        if "unavailable" in r:   # an engine this machine cannot run (sglang without CUDA): said, not dropped
            print(f"{r['engine']:>12s} {r['unavailable']}")
            continue
        if "error" in r:
            print(f"{r['engine']:>12s} ERROR: {r['error'][:100]}")
            continue
        cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for k, fmt in cols]
        print(" ".join(f"{c:>12s}" for c in cells))


def plot(result: dict, path: Path) -> Path:
    """Throughput against the roofline and batch-1 latency against its floor, per engine, saved to `path`.

    定义于 第10章 §10.5.5
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["results"] if "error" not in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar([r["engine"] for r in ok], [r["output_tokens_per_s"] for r in ok], color="tab:blue")
    roof = result["roofline"]["output_tokens_per_s"]
    a.axhline(roof, color="k", ls="--", label=f"bf16 matmul roofline {roof:.0f}")
    a.axhline(roof / 2, color="gray", ls=":", label="half roofline")
    a.set_ylabel("output tokens/s")
    a.set_title(f"offline throughput, {result['workload']['num_prompts']} prompts")
    a.legend(fontsize=8)
    lat = [r for r in ok if r.get("decode_latency_ms_b1")]
    b.bar([r["engine"] for r in lat], [r["decode_latency_ms_b1"] for r in lat], color="tab:orange")
    floor = result["decode_floor_ms"]
    b.axhline(floor, color="k", ls="--", label=f"floor weights/bandwidth {floor:.1f} ms")
    b.set_ylabel("ms per token (batch 1)")
    b.set_title("batch-1 decode latency")
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_offline(engines=("common", "hf", "hf-cb", "vllm"), num_prompts: int = 64, input_len="64:256",
                output_len="64:256", dtype: str = "bfloat16", model: str = "smollm2-135m", seed: int = 0,
                json_path: str | Path | None = None, figure: str | Path | None = None, check_fp32: bool = True,
                hf_batch_size: int = 16, engine_kwargs: dict | None = None, use_tqdm: bool = True) -> dict:
    """Run the benchmark, print the table, return the result dict (JSON-able).

    定义于 第10章 §10.5.5
    """
    engines = [engines] if isinstance(engines, str) else list(engines)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; choose from {ENGINES}")
    parse_dtype(dtype)
    load_start = load_snapshot("start")
    print(load_line(load_start))
    config = load_config(model)
    work: Workload = make_workload(num_prompts, input_len, output_len, config.vocab_size, seed)
    peaks = measure_peaks()
    wbytes = weights_bytes(load_model(model, dtype))
    roof = workload_roofline(work, config, peaks.flops.get(dtype.replace("bf16", "bfloat16"), peaks.flops["float32"]))
    runners = {"common": lambda: run_common(work, model, dtype, engine_kwargs, use_tqdm),
               "hf": lambda: run_hf(work, model, dtype, hf_batch_size),
               "hf-cb": lambda: run_hf_continuous(work, model, dtype),
               "vllm": lambda: run_vllm_peer(work, model, dtype),
               "llama.cpp": lambda: run_llama_cpp_peer(work, model, dtype),
               "common-int4": lambda: run_common_int4(work, model, dtype, engine_kwargs, use_tqdm),
               "sglang": lambda: run_sglang_peer(work, model, dtype, _b1_prompt(work.vocab_size), B1_NEW_TOKENS)}
    results = []
    for name in engines:
        t0 = time.perf_counter()
        r = guarded(name, runners[name])
        r["wall_s"] = time.perf_counter() - t0
        print(f"[bench] {name}: {r['wall_s']:.0f} s" + (f" ERROR {r['error'][:200]}" if "error" in r else ""))
        results.append(r)
    load_end = load_snapshot("end")
    by = {r["engine"]: r for r in results if "error" not in r}
    comparisons = {}
    if "common" in by:
        for other in ("hf", "vllm", "llama.cpp"):
            if other in by:
                comparisons[f"common_vs_{other}_speedup"] = (by["common"]["output_tokens_per_s"]
                                                              / by[other]["output_tokens_per_s"])
                comparisons[f"common_vs_{other}_identical_fraction"] = identical_fraction(
                    by["common"]["outputs"], by[other]["outputs"])
        comparisons["common_fraction_of_roofline"] = by["common"]["output_tokens_per_s"] / roof["output_tokens_per_s"]
    result = {"workload": {**work.describe(), "dtype": dtype, "model": model, "ignore_eos": True, "greedy": True},
              "machine": {"node": platform.node(), "device": peaks.device, "cpu": peaks.name, "threads": peaks.threads,
                          "torch": torch.__version__, "peak_flops": peaks.flops,
                          "bandwidth_bytes_per_s": peaks.bandwidth,
                          "load": {"start": load_start, "end": load_end}},
              "roofline": roof, "weights_bytes": wbytes, "decode_floor_ms": wbytes / peaks.bandwidth * 1e3,
              "results": results, "comparisons": comparisons}
    if check_fp32 and "common" in engines:
        result["fp32_exactness"] = guarded("fp32", lambda: fp32_exactness(model))
    print_table(results)
    for r in results:   # llama.cpp: its weights differ from --dtype, and it reports prefill too
        if r.get("prefill_ms_b1") is not None:
            print(f"{r['engine']}: weights {r['weights']}; batch-1 prefill of {r['prefill_tokens_b1']} tokens "
                  f"{r['prefill_ms_b1']:.0f} ms; batched mode: {r['mode']}")
    print(load_block(load_start, load_end))
    print(f"roofline (bf16 matmuls only): {roof['output_tokens_per_s']:.0f} output tok/s; "
          f"batch-1 decode floor {result['decode_floor_ms']:.1f} ms/token")
    for k, v in comparisons.items():
        print(f"{k}: {v:.3f}")
    if "fp32_exactness" in result:
        print("fp32 exactness vs transformers:", {k: v for k, v in result["fp32_exactness"].items() if k != "workload"})
    if json_path:
        slim = json.loads(json.dumps(result, default=str))
        Path(json_path).write_text(json.dumps(slim, indent=1))
    if figure:
        plot(result, Path(figure))
    return result


DEFAULT_FIGURE = FIGURES_DIR / "bench_offline.png"
