"""How a quantized model is judged: perplexity on a fixed text, next-token agreement with the
unquantized model, and decode throughput (tokens/s) at a given batch size.

The text is an excerpt of Newton's *Opticks* (public domain, see common/data/README.md), so every
variant is scored on exactly the same tokens, offline.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..device import synchronize
from ..model.kv_cache import KVCache
from ..model.llama import AttentionCache, Llama

EVAL_TEXT = Path(__file__).resolve().parent.parent / "data" / "opticks_excerpt.txt"
EVAL_TOKENS = (0, 1024)     # perplexity: two windows of 512 (seconds per variant on this CPU)
CALIB_START = 4096          # calibration tokens start here: disjoint from the evaluation span


def eval_token_ids(tokenizer) -> list[int]:
    """All token ids of the evaluation text (no BOS: SmolLM2 was trained without one).

    定义于 第8章 §8.6
    """
    return tokenizer.encode(EVAL_TEXT.read_text(), add_special_tokens=False)


@torch.inference_mode()
def perplexity(model: Llama, token_ids: list[int] | torch.Tensor, window: int = 512, batch_size: int = 4,
               make_cache: Callable[[int, int], AttentionCache] | None = None) -> float:
    """exp(mean NLL) over non-overlapping windows of `window` tokens (each window scored from its own start).

    make_cache(batch, length): run each window through that cache (e.g. an INT8 KV cache, so the
    attention reads quantized keys and values); by default attention sees exact K and V.

    定义于 第8章 §8.6
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    n = ids.numel() // window
    if n == 0:
        raise ValueError(f"need at least {window} tokens, got {ids.numel()}")
    windows = ids[: n * window].reshape(n, window).to(model.device)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        chunk = windows[i: i + batch_size]
        cache = None if make_cache is None else make_cache(chunk.shape[0], window)
        logits = model(chunk, cache=cache).float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += float(nll)
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


@torch.inference_mode()
def next_token_agreement(model: Llama, reference: Llama, prompts: list[list[int]], new_tokens: int = 16) -> float:
    """Fraction of positions where `model`'s argmax equals `reference`'s, teacher-forced on the
    reference's own greedy continuation of each prompt (so one early divergence does not count twice).

    定义于 第8章 §8.6
    """
    from ..model.generate import greedy_generate

    agree, total = 0, 0
    for prompt in prompts:
        cont = greedy_generate(reference, prompt, new_tokens)
        seq = torch.tensor([list(prompt) + cont], device=model.device)
        start = len(prompt) - 1
        a = model(seq)[0, start:-1].argmax(-1)
        b = reference(seq)[0, start:-1].argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return agree / total


@torch.inference_mode()
def decode_tokens_per_s(model: Llama, batch_size: int, prompt_len: int = 32, steps: int = 16,
                        make_cache: Callable[[int, int], AttentionCache] | None = None, repeats: int = 2) -> float:
    """Greedy decode throughput (new tokens/s over the whole batch) after a prefill; best of `repeats`.

    定义于 第8章 §8.6
    """
    if batch_size < 1 or steps < 1:
        raise ValueError("batch_size and steps must be >= 1")
    make_cache = make_cache or (lambda b, n: KVCache(model.config, b, n, model.dtype, model.device))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, model.config.vocab_size, (batch_size, prompt_len), generator=gen).to(model.device)
    best = math.inf
    for _ in range(repeats):
        cache = make_cache(batch_size, prompt_len + steps + 1)
        token = model(prompt, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        synchronize(model.device)   # on CUDA the loop below only queues kernels: wait before and after it
        start = time.perf_counter()
        for _ in range(steps):
            token = model(token, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        synchronize(model.device)
        best = min(best, time.perf_counter() - start)
    return batch_size * steps / best
