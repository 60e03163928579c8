"""Lab 3: memory arithmetic, the decode floor, roofline placement and a Triton RMSNorm kernel.

Fill in every function (remove the `raise NotImplementedError`), then run `make lab-3`.
Units: bytes and seconds; bandwidth in bytes/s, peaks in FLOP/s. 1 GB = 1e9 bytes.
Without a GPU the Triton kernel runs in the interpreter (TRITON_INTERPRET=1, set by
importing common.triton_kernels before triton): same code, slow, fine for small tensors.
"""
from __future__ import annotations

import torch

import common.triton_kernels  # noqa: F401  (sets TRITON_INTERPRET=1 when there is no GPU)
import triton
import triton.language as tl


def weights_bytes(params: float, bytes_per_param: float = 2) -> float:
    """Bytes of the weights: params × bytes per parameter (2 fp16/bf16, 1 fp8/int8, 0.5 int4).
    Raise ValueError if bytes_per_param <= 0."""
    # TODO: one multiplication, plus the check
    raise NotImplementedError("weights_bytes")


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                   bytes_per_value: float = 2) -> float:
    """Bytes of the KV cache of `batch` sequences of `tokens` tokens each.

    Per token and layer the cache holds one K and one V vector per KV head (GQA: kv_heads <
    query heads; MQA: 1). Count every layer.
    """
    # TODO: 2 × layers × kv_heads × head_dim × bytes × tokens × batch
    raise NotImplementedError("kv_cache_bytes")


def decode_floor_seconds(params: float, layers: int, kv_heads: int, head_dim: int, batch: int, context: int,
                         bandwidth: float, bytes_per_value: float = 2) -> float:
    """Lower bound of one decode step's time when it is memory-bound: every weight is read once
    per step (shared by the whole batch) and every request's KV cache of `context` tokens is
    read in every layer, all at `bandwidth` bytes/s (weights and KV at bytes_per_value each).
    Raise ValueError if bandwidth <= 0."""
    # TODO: (weights + KV of all layers of all requests) / bandwidth
    raise NotImplementedError("decode_floor_seconds")


def roofline_place(m: int, k: int, n: int, peak_flops: float, bandwidth: float,
                   bytes_per_element: int = 2) -> tuple[float, float, bool]:
    """Place the matmul [m, k] @ [k, n] on a roofline. Returns (intensity, attainable, memory_bound).

    FLOPs = 2mkn; bytes = bytes_per_element × (mk + kn + mn) (read both inputs, write the output
    once); intensity = FLOPs / bytes; attainable = min(peak_flops, intensity × bandwidth);
    memory_bound = intensity < peak_flops / bandwidth (left of the ridge point).
    """
    # TODO: three formulas
    raise NotImplementedError("roofline_place")


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_row, eps, BLOCK: tl.constexpr):
    # TODO: one program per row: row = tl.program_id(0); cols = tl.arange(0, BLOCK); mask = cols < n_cols;
    # load the row as fp32 (other=0.0), inv_rms = 1 / sqrt(sum(x*x) / n_cols + eps),
    # y = weight * (x * inv_rms); store y cast to the output dtype (mask!).
    pass


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension with a Triton kernel: x / sqrt(mean(x²) + eps) × weight,
    statistics in fp32, output in x's dtype, any leading shape. Raise ValueError when weight's
    length differs from x.shape[-1].

    Launch _rmsnorm_kernel with grid (rows,) on x viewed as [rows, cols] (contiguous), with
    BLOCK = triton.next_power_of_2(cols).
    """
    # TODO: check shapes, reshape, allocate the output, launch the kernel, reshape back
    raise NotImplementedError("rmsnorm")
