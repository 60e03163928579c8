"""How much memory an LLM needs to serve (§3.3): weights + KV cache + activations + overhead,
how many requests fit on a GPU, and the decode floor (bytes moved per step / bandwidth).

The book's two slips are the reason these are functions and not prose: Llama-3-70B in fp16 is
~141 GB of weights (not 80 GB), and a decode step reads the KV cache of *every* layer.
Model shapes come from `common.model.model_shapes` (one table for the whole repo).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.kv_math import GIB
from ..model.model_shapes import ModelShape


def _check_bytes(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value}")


def weights_bytes(model: ModelShape, bytes_per_param: float = 2) -> float:
    """Parameters × bytes per parameter (2 for fp16/bf16, 1 for fp8/int8, 0.5 for 4-bit).

    定义于 第3章 §3.3
    """
    _check_bytes(bytes_per_param, "bytes_per_param")
    return model.params * bytes_per_param


def kv_cache_bytes(model: ModelShape, tokens: int, batch: int = 1, bytes_per_value: float = 2) -> float:
    """KV cache of `batch` sequences of `tokens` tokens each.

    定义于 第3章 §3.3
    """
    if tokens < 0 or batch < 0:
        raise ValueError(f"tokens and batch must be >= 0, got {tokens}, {batch}")
    return batch * tokens * model.bytes_per_token(bytes_per_value)


def activation_bytes(model: ModelShape, batch: int, seq: int, bytes_per_value: float = 2,
                     fused_attention: bool = True) -> float:
    """Peak transient activations of one inference forward (nothing kept for backward).

    Live at once inside a layer: residual + normed input + q,k,v + attention output (≈ 4·hidden
    wide) and the MLP's gate/up (2·intermediate), for batch·seq tokens; without a fused
    (flash) kernel also the batch·heads·seq² score matrix; plus fp32 logits of the last token.
    An estimate, not a law: real engines differ by allocator and kernel choices.

    定义于 第3章 §3.3
    """
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1, got {batch}, {seq}")
    tokens = batch * seq
    layer = tokens * (4 * model.hidden + 2 * model.intermediate) * bytes_per_value
    scores = 0 if fused_attention else batch * model.heads * seq * seq * bytes_per_value
    logits = batch * model.vocab * 4
    return layer + scores + logits


@dataclass(frozen=True)
class MemoryBudget:
    """Serving memory split into weights, KV cache, activations and overhead (bytes).

    定义于 第3章 §3.3
    """
    weights: float
    kv_cache: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def fits(self, memory_bytes: float) -> bool:
        return self.total <= memory_bytes


def memory_budget(model: ModelShape, batch: int, context: int, bytes_per_param: float = 2,
                  kv_bytes_per_value: float = 2, prefill_chunk: int | None = None,
                  runtime_bytes: float = 1 * GIB, fragmentation: float = 0.05) -> MemoryBudget:
    """Everything one GPU (or the sum over a TP group) must hold for `batch` requests of `context` tokens.

    Overhead = `runtime_bytes` (CUDA context, cuBLAS workspaces, NCCL buffers: ~1 GiB is an
    ASSUMPTION) + `fragmentation` × the rest. Activations are sized for a prefill chunk of
    `prefill_chunk` tokens (default: the whole context of one request).

    定义于 第3章 §3.3
    """
    weights = weights_bytes(model, bytes_per_param)
    kv = kv_cache_bytes(model, context, batch, kv_bytes_per_value)
    act = activation_bytes(model, 1, prefill_chunk or context, bytes_per_param)
    overhead = runtime_bytes + fragmentation * (weights + kv + act)
    return MemoryBudget(weights, kv, act, overhead)


def max_concurrent_requests(model: ModelShape, memory_bytes: float, context: int, num_gpus: int = 1,
                            bytes_per_param: float = 2, kv_bytes_per_value: float = 2,
                            utilization: float = 0.9, runtime_bytes: float = 1 * GIB) -> int:
    """How many requests of `context` tokens fit in the KV space left over after weights,
    activations and overhead, on `num_gpus` GPUs of `memory_bytes` each (weights sharded).

    `utilization` is the share of memory the engine may use (vLLM's gpu_memory_utilization:
    weights + activations + KV, not "90% for KV"). Activations are sized for one prefill chunk
    of min(context, 8192) tokens. Returns 0 when even one request does not fit.

    定义于 第3章 §3.3
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    if context < 1 or num_gpus < 1:
        raise ValueError(f"context and num_gpus must be >= 1, got {context}, {num_gpus}")
    _check_bytes(memory_bytes, "memory_bytes")
    usable = memory_bytes * num_gpus * utilization
    fixed = (weights_bytes(model, bytes_per_param) + activation_bytes(model, 1, min(context, 8192), bytes_per_param)
             + runtime_bytes * num_gpus)
    per_request = kv_cache_bytes(model, context, 1, kv_bytes_per_value)
    return max(0, math.floor((usable - fixed) / per_request))


@dataclass(frozen=True)
class DecodeStep:
    """Bytes one decode step must read and the time they take at a given bandwidth.

    定义于 第3章 §3.3
    """
    weight_bytes: float
    kv_bytes: float
    bandwidth: float

    @property
    def bytes_moved(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def seconds(self) -> float:
        return self.bytes_moved / self.bandwidth

    @property
    def tokens_per_second_per_request(self) -> float:
        return 1.0 / self.seconds


def decode_floor(model: ModelShape, bandwidth: float, batch: int = 1, context: int = 0,
                 bytes_per_param: float = 2, kv_bytes_per_value: float = 2) -> DecodeStep:
    """Memory-bound lower bound of one decode step: every weight once, plus the KV cache of all
    layers of all `batch` requests at `context` tokens each, divided by `bandwidth` (bytes/s).

    定义于 第3章 §3.3
    """
    _check_bytes(bandwidth, "bandwidth")
    return DecodeStep(weights_bytes(model, bytes_per_param),
                      kv_cache_bytes(model, context, batch, kv_bytes_per_value), bandwidth)
