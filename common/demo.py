"""`make demo`: the headline run on the real model.

Part 1 — the from-scratch Llama and transformers answer the same chat prompts greedily:
identical tokens, and each one's tokens/s on this machine. Both sides generate once untimed
first, so that one-time costs (first touch of the weights, kernel and allocator warm-up) are not
counted in the first prompt's speed.
Part 2 (the headline) — our continuous-batching engine against vLLM and transformers on one
offline workload: same model, dtype (bf16), prompts and machine, in one run (`common.bench`).
The machine's load average is printed first and with the headline: above the core count, other
work competes for the CPU and the speeds are not to be trusted.
"""
from __future__ import annotations

import sys
import time

import torch

from .device import pick_device
from .model.generate import greedy_generate
from .models import chat_prompt_ids, load_hf_model, load_model, load_tokenizer
from .bench.loadinfo import load_line, load_snapshot

MODEL = "smollm2-135m"
PROMPTS = [
    "What is the capital of France?",
    "Give me two tips for writing clear code.",
    "Explain in one sentence why LLM decoding is memory-bound.",
]
MAX_NEW_TOKENS = 48
WARMUP_TOKENS = 16


def _hf_greedy(model, ids: list[int], eos: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def parity_demo(dtype: torch.dtype = torch.float32) -> bool:
    """Greedy tokens of our model against transformers on the same prompts: the headline correctness check.

    本书无对应章节（工具）
    """
    device = pick_device()
    tokenizer = load_tokenizer(MODEL)
    eos = tokenizer.eos_token_id
    ours, ref = load_model(MODEL, dtype, device), load_hf_model(MODEL, dtype, device)
    # untimed warm-up of both sides on the first prompt: first-call costs are not tokens/s
    warm_ids = chat_prompt_ids(MODEL, PROMPTS[0])
    greedy_generate(ours, warm_ids, WARMUP_TOKENS, eos)
    _hf_greedy(ref, warm_ids, eos, WARMUP_TOKENS)
    rows, all_same = [], True
    for prompt in PROMPTS:
        ids = chat_prompt_ids(MODEL, prompt)
        timings, outputs = {}, {}
        for label, run in (("common", lambda: greedy_generate(ours, ids, MAX_NEW_TOKENS, eos)),
                           ("transformers", lambda: _hf_greedy(ref, ids, eos))):
            start = time.perf_counter()
            outputs[label] = run()
            timings[label] = len(outputs[label]) / (time.perf_counter() - start)
        same = outputs["common"] == outputs["transformers"]
        all_same &= same
        rows.append((prompt, tokenizer.decode(outputs["common"], skip_special_tokens=True), same,
                     timings["common"], timings["transformers"]))
    print(f"\n== from-scratch Llama vs transformers: {MODEL}, {str(dtype).removeprefix('torch.')}, "
          f"greedy, {device} ==")
    for prompt, text, same, *_ in rows:
        print(f"\nQ: {prompt}\nA: {text.strip()}\n   identical tokens: {'yes' if same else 'NO'}")
    print(f"\n(both sides warmed up untimed first)\n{load_line(load_snapshot('end of the parity run'), '[demo]')}")
    print(f"{'prompt':44s} {'identical':>9s} {'common tok/s':>13s} {'HF tok/s':>9s}")
    for prompt, _, same, ours_tps, hf_tps in rows:
        print(f"{prompt[:44]:44s} {str(same):>9s} {ours_tps:13.1f} {hf_tps:9.1f}")
    return all_same


def engine_demo() -> dict:
    """A small offline benchmark of our engine vs vLLM and transformers, sized to take minutes on 2 cores.

    本书无对应章节（工具）
    """
    from .bench.offline import run_offline
    from .paths import CACHE_DIR

    # A quarter of `make bench`'s workload, so that the demo takes minutes on a 2-core CPU.
    # run_offline prints the machine's load first and again, at start and end, beside its table.
    print("\n== headline: continuous-batching engine vs vLLM vs transformers (bf16, 32 requests) ==")
    return run_offline(engines=("common", "hf", "vllm"), num_prompts=32, input_len="64:128", output_len="64:128",
                       dtype="bfloat16", check_fp32=False, json_path=CACHE_DIR / "demo_bench.json")


def main() -> int:
    """`make demo`: run the parity check and the engine benchmark, report how long each took.

    本书无对应章节（工具）
    """
    start = time.perf_counter()
    print(load_line(load_snapshot("start"), "[demo]"))
    ok = parity_demo()
    print(f"\n[demo] parity: {time.perf_counter() - start:.1f} s")
    result = engine_demo()
    print(f"\n[demo] total: {time.perf_counter() - start:.1f} s")
    return 0 if ok and all("error" not in r for r in result["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
