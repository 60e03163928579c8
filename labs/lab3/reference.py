"""Lab 3 reference solutions: the same names as exercises.py, bound to the library in common/."""
from __future__ import annotations

from common.hardware import memory_calc
from common.model.model_shapes import ModelShape
from common.hardware.roofline import MatmulShape, place
from common.triton_kernels import rmsnorm

__all__ = ["weights_bytes", "kv_cache_bytes", "decode_floor_seconds", "roofline_place", "rmsnorm"]


def _shape(params: float, layers: int, kv_heads: int, head_dim: int) -> ModelShape:
    # Only the fields the KV/weights formulas read matter; heads = kv_heads keeps it valid.
    return ModelShape("lab", params, layers, 1, kv_heads, kv_heads, head_dim, 1, 1)


def weights_bytes(params, bytes_per_param=2):
    return memory_calc.weights_bytes(_shape(params, 1, 1, 1), bytes_per_param)


def kv_cache_bytes(layers, kv_heads, head_dim, tokens, batch=1, bytes_per_value=2):
    return memory_calc.kv_cache_bytes(_shape(1, layers, kv_heads, head_dim), tokens, batch, bytes_per_value)


def decode_floor_seconds(params, layers, kv_heads, head_dim, batch, context, bandwidth, bytes_per_value=2):
    shape = _shape(params, layers, kv_heads, head_dim)
    return memory_calc.decode_floor(shape, bandwidth, batch, context, bytes_per_value, bytes_per_value).seconds


def roofline_place(m, k, n, peak_flops, bandwidth, bytes_per_element=2):
    point = place(MatmulShape(m, k, n, bytes_per_element), peak_flops, bandwidth)
    return point.intensity, point.attainable, point.memory_bound
