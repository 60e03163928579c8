"""One function per engine: run the workload, return outputs, throughput/latency and the batch-1
decode latency. Every function catches its own failure and returns {"engine", "error"} instead,
so a peer that cannot run here shows up in the table rather than vanishing."""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from typing import Callable

import torch

from ..device import parse_dtype
from .metrics import summarize
from .workload import Workload

B1_PROMPT_LEN, B1_NEW_TOKENS = 128, 64


def _b1_prompt(vocab: int) -> list[int]:
    return torch.randint(3, vocab, (B1_PROMPT_LEN,), generator=torch.Generator().manual_seed(1)).tolist()


def guarded(engine: str, fn: Callable[[], dict]) -> dict:
    """Run one engine; a failure becomes an error row in the results instead of aborting the benchmark.

    定义于 第10章 §10.5.5
    """
    try:
        return fn()
    except Exception as exc:  # reported, never silently dropped
        return {"engine": engine, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4)}


def run_common(workload: Workload, model: str, dtype: str, engine_kwargs: dict | None = None,
               use_tqdm: bool = True) -> dict:
    """Our engine (`common.engine.LLM`) on the workload: outputs, throughput and latency.

    定义于 第10章 §10.5.5
    """
    from ..engine import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model, dtype=dtype, **(engine_kwargs or {}))     # defaults: common.engine.EngineConfig
    startup = time.perf_counter() - t0
    config = {k: v for k, v in asdict(llm.engine_config).items() if isinstance(v, (bool, int, float, str))}
    warm = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate([workload.prompts[0][:32]], warm, use_tqdm=False)  # one-time allocator/first-call costs
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in workload.output_lens]
    llm.stats.clear()
    t0 = time.perf_counter()
    outs = llm.generate(workload.prompts, params, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - t0
    metrics = [o.outputs[0].metrics for o in outs]
    result = {"engine": "common", "startup_s": startup, "config": config,
              **summarize(workload, elapsed, [m.ttft for m in metrics], [m.tpot for m in metrics if m.tpot]),
              "outputs": [o.outputs[0].token_ids for o in outs],
              "num_steps": len(llm.stats), "num_preemptions": sum(s.num_preempted for s in llm.stats),
              "step_time_split_s": {k: sum(getattr(s, k) for s in llm.stats)
                                    for k in ("schedule_s", "prepare_s", "forward_s", "sample_s")}}
    prompt = _b1_prompt(llm.config.vocab_size)
    times = []
    for n in (1, B1_NEW_TOKENS + 1):
        t0 = time.perf_counter()
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)
        times.append(time.perf_counter() - t0)
    result["decode_latency_ms_b1"] = (times[1] - times[0]) / B1_NEW_TOKENS * 1e3
    return result


def _hf_generate(model, batch: list[list[int]], new_tokens: int) -> torch.Tensor:
    """Left-padded static batch, greedy, exactly `new_tokens` tokens each (EOS ignored)."""
    width = max(len(p) for p in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return out[:, width:].cpu()


@torch.inference_mode()
def run_hf(workload: Workload, model: str, dtype: str, batch_size: int = 16) -> dict:
    """transformers `generate` over static batches in arrival order: every batch runs until its
    longest request is done (the padding/tail waste continuous batching removes).

    定义于 第10章 §10.5.5
    """
    from ..models import load_hf_model

    hf = load_hf_model(model, parse_dtype(dtype))
    _hf_generate(hf, [workload.prompts[0][:32]], 2)  # warm-up
    outputs: list[list[int]] = []
    t0 = time.perf_counter()
    for start in range(0, workload.num_prompts, batch_size):
        batch = workload.prompts[start:start + batch_size]
        lens = workload.output_lens[start:start + batch_size]
        gen = _hf_generate(hf, batch, max(lens))
        outputs += [gen[i, :n].tolist() for i, n in enumerate(lens)]
    elapsed = time.perf_counter() - t0
    prompt = _b1_prompt(hf.config.vocab_size)
    times = []
    for n in (1, B1_NEW_TOKENS + 1):
        t = time.perf_counter()
        _hf_generate(hf, [prompt], n)
        times.append(time.perf_counter() - t)
    return {"engine": "hf", "mode": f"static batches of {batch_size}", **summarize(workload, elapsed),
            "outputs": outputs, "decode_latency_ms_b1": (times[1] - times[0]) / B1_NEW_TOKENS * 1e3}


def _hf_continuous_child(workload: Workload, model: str, dtype: str, queue) -> None:
    queue.put(guarded("hf-cb", lambda: _hf_continuous(workload, model, dtype)))


def run_hf_continuous(workload: Workload, model: str, dtype: str, timeout_s: float = 240) -> dict:
    """transformers' own continuous-batching API (`generate_batch`) in a child process with a
    time limit: on this CPU build it can stall, and a stalled peer must not stall the benchmark.

    定义于 第10章 §10.5.5
    """
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_hf_continuous_child, args=(workload, model, dtype, results), daemon=True)
    proc.start()
    try:
        result = results.get(timeout=timeout_s)
    except queue_mod.Empty:
        result = {"engine": "hf-cb", "error": f"generate_batch did not finish within {timeout_s:.0f} s"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    return result


@torch.no_grad()   # not inference_mode: generate_batch's worker thread updates tensors made here in place
def _hf_continuous(workload: Workload, model: str, dtype: str) -> dict:
    """transformers' own continuous-batching API (`generate_batch`), where this version has one."""
    from transformers import GenerationConfig

    from ..models import load_hf_model

    hf = load_hf_model(model, parse_dtype(dtype))
    if not hasattr(hf, "generate_batch"):
        raise RuntimeError("this transformers version has no generate_batch")
    config = GenerationConfig(max_new_tokens=max(workload.output_lens), do_sample=False, eos_token_id=-1,
                              pad_token_id=0)
    t0 = time.perf_counter()
    result = hf.generate_batch(inputs=workload.prompts, generation_config=config, progress_bar=False)
    elapsed = time.perf_counter() - t0
    ordered = [result[k] for k in sorted(result, key=lambda k: int(str(k).split("_")[-1]))]
    outputs = [list(r.generated_tokens)[:n] for r, n in zip(ordered, workload.output_lens)]
    short = sum(len(o) < n for o, n in zip(outputs, workload.output_lens))
    if short:   # failed requests come back empty: never count tokens that were not generated
        raise RuntimeError(f"generate_batch returned {short} of {len(outputs)} requests without their tokens "
                           "(transformers logged them as failed during generation)")
    # every request ran to the longest output length (one GenerationConfig for the batch)
    extra = sum(max(workload.output_lens) - n for n in workload.output_lens)
    return {"engine": "hf-cb", "mode": "generate_batch, every request to the longest output",
            **summarize(workload, elapsed), "outputs": outputs, "wasted_tokens": extra}


def run_vllm_peer(workload: Workload, model: str, dtype: str) -> dict:
    """vLLM in a child process (one engine start): the workload plus the batch-1 latency jobs.

    定义于 第10章 §10.5.5
    """
    from ..peers.vllm_runner import run_vllm

    prompt = _b1_prompt(workload.vocab_size)
    base = {"temperature": 0.0, "ignore_eos": True}
    spec = {"model_name": model, "llm": {"dtype": dtype, "max_model_len": 2048, "seed": 0},
            "jobs": [{"name": "warmup", "prompt_token_ids": [workload.prompts[0][:32]],
                      "sampling": {**base, "max_tokens": 4}},
                     {"name": "workload", "prompt_token_ids": workload.prompts, "sampling": base,
                      "sampling_per_prompt": [{"max_tokens": n} for n in workload.output_lens]},
                     {"name": "b1_short", "prompt_token_ids": [prompt], "sampling": {**base, "max_tokens": 1}},
                     {"name": "b1_long", "prompt_token_ids": [prompt],
                      "sampling": {**base, "max_tokens": B1_NEW_TOKENS + 1}}]}
    raw = run_vllm(spec)
    if "error" in raw:
        return {"engine": "vllm", "error": raw["error"]}
    jobs = {j["name"]: j for j in raw["jobs"]}
    main = jobs["workload"]
    ttft = [r["ttft_s"] for r in main["outputs"] if r.get("ttft_s") is not None]
    b1 = (jobs["b1_long"]["elapsed_s"] - jobs["b1_short"]["elapsed_s"]) / B1_NEW_TOKENS * 1e3
    return {"engine": "vllm", "version": raw.get("version"), "startup_s": raw.get("startup_s"),
            **summarize(workload, main["elapsed_s"], ttft), "outputs": [r["token_ids"] for r in main["outputs"]],
            "decode_latency_ms_b1": b1}


# --- llama.cpp peer (common.peers.llama_cpp): the Q4_1 GGUF our model is converted from -------------------------
def run_llama_cpp_peer(workload: Workload, model: str, dtype: str, n_seq_max: int = 16) -> dict:
    """The workload through llama.cpp's batch API (continuous batching over `llama_decode`, up to
    `n_seq_max` sequences) plus batch-1 decode ms/token and prefill of the batch-1 prompt. Its weights
    are the GGUF's Q4_1 blocks whatever `dtype` says: the row names them in "weights".

    定义于 第10章 §10.5.5
    """
    from ..peers import llama_cpp as peer

    if model != "smollm2-135m":
        raise ValueError(f"llama.cpp runs the GGUF of smollm2-135m only, not {model!r}")
    need = max(len(p) for p in workload.prompts) + max(workload.output_lens)
    batched = peer.run_batched(workload.prompts, workload.output_lens, n_seq_max=n_seq_max,
                               n_ctx_per_seq=max(512, need))
    llm = peer.load(n_ctx=1024)
    try:
        prompt = _b1_prompt(llm.n_vocab())
        b1 = peer.decode_ms_per_token(llm, prompt, B1_NEW_TOKENS)
        prefill = peer.prefill_ms(llm, prompt)
    finally:
        llm.close()
    return {"engine": "llama.cpp", "version": peer.installed_version(), "weights": "Q4_1 GGUF (embedding Q8_0)",
            "mode": f"llama_decode continuous batching, n_seq_max={n_seq_max}, {peer.DEFAULT_THREADS} threads",
            **summarize(workload, batched["elapsed_s"], batched["ttft_s"], batched["tpot_s"]),
            "outputs": batched["outputs"], "decode_latency_ms_b1": b1,
            "prefill_ms_b1": prefill, "prefill_tokens_b1": len(prompt)}


# --- our engine on INT4 weights (common.quant.int4pack): torch's CPU int4 kernel reads the 4-bit codes -------------
def run_common_int4(workload: Workload, model: str, dtype: str, engine_kwargs: dict | None = None,
                    use_tqdm: bool = True, group_size: int = 128) -> dict:
    """`run_common` with every decoder projection RTN-quantized to INT4 (asymmetric, g128, the format our
    GPTQ/AWQ produce) and computed by `_weight_int4pack_mm_for_cpu`; the LM head stays in `dtype`. Its
    outputs differ from the bf16 rows (other weights), so no identical-token comparison is made.

    定义于 第10章 §10.5.5
    """
    from ..models import load_model
    from ..quant.int4pack import decode_bytes_per_token, int4pack_model

    t0 = time.perf_counter()
    int4 = int4pack_model(load_model(model, dtype, fused=True), group_size=group_size)
    quantize_s = time.perf_counter() - t0
    result = run_common(workload, int4, dtype, engine_kwargs, use_tqdm)
    result.update(engine="common-int4", quantize_s=quantize_s, decode_weight_bytes=decode_bytes_per_token(int4),
                  weights=f"INT4 RTN g{group_size} asymmetric (torch int4pack kernel), LM head {dtype}")
    return result
