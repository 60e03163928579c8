"""Decode under torch.compile without a recompile per token: a whole-buffer KV cache with a mask.

Why: the contiguous cache of chapter 5 attends over `k[:, :, :seq_len]`, a shape that grows by one
every step, and keeps `seq_len` as a Python int; torch.compile specialises on both, so decode
recompiles step after step until Dynamo's recompile limit (chapter 11 notebook 1 counts the graphs).
Here the K/V buffers keep one shape [layers, max_batch, kv_heads, max_len, head_dim], the write
position is a 1-element tensor updated in place *outside* the compiled function, and attention runs
over the whole buffer with a mask `key_position <= query_position`. Every decode step then has
identical shapes and guards: one graph. A batch of B <= max_batch uses the first B rows, so one graph
compiled with a symbolic batch serves every batch size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from common.device import synchronize
from common.model.llama import ContextLengthError, Llama, LlamaConfig

COMPILE_MODES = ("inductor", "freezing", "cpp_wrapper")


class StaticKVCache:
    """KV cache with fixed shapes for compiled decode (implements common.model.llama.AttentionCache).

    `position` is a long tensor [1]: where the next token is written. The model calls `attend`
    per layer; `advance` is a no-op inside the graph (an int attribute changing there would add a
    guard); the driver calls `step_done(n)`, which moves `position` in place, outside the graph.

    定义于 第11章 §11.5
    """

    def __init__(self, config: LlamaConfig, max_batch: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if max_batch < 1 or max_seq_len < 1:
            raise ValueError(f"max_batch and max_seq_len must be >= 1, got {max_batch}, {max_seq_len}")
        shape = (config.num_hidden_layers, max_batch, config.num_key_value_heads, max_seq_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq_len = max_seq_len
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(max_seq_len, device=device)

    @property
    def seq_len(self) -> int:
        """Tokens stored so far (reads the tensor: call it outside compiled code)."""
        return int(self.position.item())

    def positions(self, num_tokens: int) -> torch.Tensor:
        """Absolute positions [num_tokens] of the next tokens."""
        return self.position + torch.arange(num_tokens, device=self.position.device)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch = q.shape[0]
        if not torch.compiler.is_compiling() and batch > self.k.shape[1]:  # unbacked batch when traced
            raise ValueError(f"batch {batch} exceeds the cache's max batch {self.k.shape[1]}")
        query_pos = self.positions(q.shape[-2])
        keys, values = self.k[layer_idx, :batch], self.v[layer_idx, :batch]
        keys.index_copy_(2, query_pos, k)
        values.index_copy_(2, query_pos, v)
        mask = self.key_positions[None, :] <= query_pos[:, None]       # [S, max_len], True = may attend
        # enable_gqa as a constant (a symbolic head count would make it a SymBool, which SDPA refuses)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)

    def advance(self, num_tokens: int) -> None:
        """Called by the model inside the (compiled) forward: nothing to do, see `step_done`."""

    def step_done(self, num_tokens: int) -> None:
        end = self.seq_len + num_tokens
        if end > self.max_seq_len:
            raise ContextLengthError(f"static KV cache holds {self.max_seq_len} tokens; {end} requested")
        self.position.add_(num_tokens)

    def reset(self) -> None:
        self.position.zero_()


def make_step(model: Llama, cache: StaticKVCache) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decode step to compile: tokens [B, 1] -> last-position logits [B, vocab].

    定义于 第11章 §11.5
    """

    def step(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens, positions=cache.positions(tokens.shape[1]), cache=cache)[:, -1]

    return step


def compile_step(step: Callable, mode: str, backend: str = "inductor") -> Callable:
    """torch.compile `step` with inductor in one of COMPILE_MODES (options are inductor config keys).

    Every other dimension stays static; the batch dimension of `tokens` is marked *unbacked* (a symbol
    with no 0/1 specialisation), so one graph serves batch 1, 8 and 32 and the decode steps never
    recompile. backend="eager" traces with Dynamo only (no code generation: the tests count graphs so).

    定义于 第11章 §11.5
    """
    options = {"inductor": {}, "freezing": {"freezing": True}, "cpp_wrapper": {"cpp_wrapper": True}}
    if mode not in options:
        raise ValueError(f"unknown compile mode {mode!r}; use one of {COMPILE_MODES}")
    compiled = torch.compile(step, backend=backend, fullgraph=True, dynamic=False,
                             options=options[mode] if backend == "inductor" else None)

    def run(tokens: torch.Tensor) -> torch.Tensor:
        torch._dynamo.decorators.mark_unbacked(tokens, 0)
        return compiled(tokens)

    return run


def truncated(model: Llama, num_layers: int) -> Llama:
    """The model's first `num_layers` decoder layers (same weights, same final norm and LM head), in place.

    Why: inductor's compile time grows with the number of layers it generates code for; a few real
    SmolLM2 layers keep three compile modes inside a notebook's time budget on a 2-core CPU.

    定义于 第11章 §11.5
    """
    if not 1 <= num_layers <= len(model.layers):
        raise ValueError(f"num_layers must be in 1..{len(model.layers)}, got {num_layers}")
    model.layers = model.layers[:num_layers]
    model.config = replace(model.config, num_hidden_layers=num_layers)
    return model


@dataclass
class DecodeRun:
    """What one decode run returns: greedy tokens, every step's logits and its timings.

    定义于 第11章 §11.5
    """
    tokens: torch.Tensor       # [B, steps] greedy tokens
    logits: torch.Tensor       # [B, steps, vocab] fp32 logits of every decode step
    first_call_s: float        # first decode step (compile + run for a compiled step)
    step_s: float              # median seconds per decode step after the first (TPOT)


@torch.no_grad()
def greedy_decode(model: Llama, step: Callable, cache: StaticKVCache, prompt: torch.Tensor,
                  steps: int) -> DecodeRun:
    """Prefill `prompt` [B, S] eagerly into `cache`, then `steps` greedy decode steps through `step`.

    定义于 第11章 §11.5
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (one compiles, the rest are timed), got {steps}")
    if prompt.shape[1] + steps > cache.max_seq_len:
        raise ContextLengthError(
            f"{prompt.shape[1]} prompt + {steps} new tokens exceed the cache's {cache.max_seq_len} positions")
    cache.reset()
    logits = model(prompt, positions=cache.positions(prompt.shape[1]), cache=cache)[:, -1]
    cache.step_done(prompt.shape[1])
    token = logits.argmax(-1, keepdim=True)
    tokens, all_logits, times = [], [], []
    for _ in range(steps):
        synchronize(token.device)
        start = time.perf_counter()
        logits = step(token)
        synchronize(token.device)      # a compiled CUDA step returns before its kernels finish
        times.append(time.perf_counter() - start)
        cache.step_done(1)
        all_logits.append(logits.float())
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
    rest = sorted(times[1:])
    return DecodeRun(torch.cat(tokens, 1), torch.stack(all_logits, 1), times[0], rest[len(rest) // 2])
