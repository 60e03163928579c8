"""Throughput/latency summaries, the roofline of a workload and the batch-1 decode floor."""
from __future__ import annotations

import statistics

import torch

from ..model.llama import LlamaConfig
from .workload import Workload


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values.

    定义于 第10章 §10.5.5
    """
    if not values:
        return None
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100))


def summarize(workload: Workload, elapsed_s: float, ttft_s: list[float] | None = None,
              tpot_s: list[float] | None = None) -> dict:
    """Throughput (requests, output and total tokens per second) and TTFT/TPOT percentiles of one run.

    定义于 第10章 §10.5.5
    """
    out = {"elapsed_s": elapsed_s,
           "requests_per_s": workload.num_prompts / elapsed_s,
           "output_tokens_per_s": workload.num_output_tokens / elapsed_s,
           "total_tokens_per_s": (workload.num_input_tokens + workload.num_output_tokens) / elapsed_s}
    for name, values in (("ttft", ttft_s or []), ("tpot", tpot_s or [])):
        out[f"{name}_p50_ms"] = None if not values else percentile(values, 50) * 1e3
        out[f"{name}_p99_ms"] = None if not values else percentile(values, 99) * 1e3
        out[f"{name}_mean_ms"] = None if not values else statistics.fmean(values) * 1e3
    return out


def matmul_params(config: LlamaConfig) -> tuple[int, int]:
    """(parameters every token multiplies through the decoder layers, LM-head parameters).

    定义于 第10章 §10.5.5
    """
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    return config.num_hidden_layers * per_layer, h * config.vocab_size


def workload_roofline(workload: Workload, config: LlamaConfig, peak_flops: float) -> dict:
    """The fastest the matmuls of this workload can go at `peak_flops`: prompt tokens through the
    layers (LM head only on the last), output tokens through layers + LM head; attention ignored.

    定义于 第10章 §10.5.5
    """
    layers, head = matmul_params(config)
    flops = 2 * (layers * (workload.num_input_tokens + workload.num_output_tokens)
                 + head * workload.num_output_tokens)
    seconds = flops / peak_flops
    return {"flops": flops, "min_seconds": seconds, "output_tokens_per_s": workload.num_output_tokens / seconds}


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameter tensors (a tied embedding counted once).

    定义于 第10章 §10.5.5
    """
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def identical_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of requests whose outputs are identical in two runs: engines compared on what they produce.

    定义于 第10章 §10.5.5
    """
    if len(a) != len(b) or not a:
        raise ValueError("need two equally long, non-empty lists of outputs")
    return sum(x == y for x, y in zip(a, b)) / len(a)
