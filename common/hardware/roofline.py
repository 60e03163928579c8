"""The roofline model: attainable FLOP/s = min(peak, intensity × bandwidth).

Used by chapter 3 (the machine's roofline) and chapter 5 (prefill vs decode matmuls).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MatmulShape:
    """[m, k] @ [k, n]: m tokens through a k→n weight.

    定义于 第3章 §3.2.4
    """
    m: int
    k: int
    n: int
    bytes_per_element: int = 2

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def bytes_moved(self) -> int:
        """Read activations and weights once, write the output once (ideal caching)."""
        return self.bytes_per_element * (self.m * self.k + self.k * self.n + self.m * self.n)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: min(peak FLOP/s, arithmetic intensity x bandwidth).

    定义于 第3章 §3.2.4
    """
    return min(peak_flops, intensity * bandwidth)


def is_memory_bound(intensity: float, peak_flops: float, bandwidth: float) -> bool:
    """Whether a kernel of this intensity sits left of the ridge point (memory-bound).

    定义于 第3章 §3.2.4
    """
    return intensity < peak_flops / bandwidth


def predicted_time(shape: MatmulShape, peak_flops: float, bandwidth: float) -> float:
    """Roofline lower bound on the time of one matmul: the slower of compute and memory.

    定义于 第3章 §3.2.4
    """
    return max(shape.flops / peak_flops, shape.bytes_moved / bandwidth)


@dataclass(frozen=True)
class RooflinePoint:
    """Where one matmul sits on a roofline.

    定义于 第3章 §3.2.4
    """
    shape: MatmulShape
    intensity: float          # FLOP per byte moved
    attainable: float         # FLOP/s the roofline allows at that intensity
    memory_bound: bool
    time_floor: float         # seconds: the slower of compute and memory


def place(shape: MatmulShape, peak_flops: float, bandwidth: float) -> RooflinePoint:
    """Put a matmul on the roofline of a device with these two peaks.

    定义于 第3章 §3.2.4
    """
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"peaks must be > 0, got {peak_flops} FLOP/s and {bandwidth} B/s")
    i = shape.intensity
    return RooflinePoint(shape, i, attainable_flops(i, peak_flops, bandwidth),
                         is_memory_bound(i, peak_flops, bandwidth), predicted_time(shape, peak_flops, bandwidth))


def predicted_knee(weight_shapes: list[tuple[int, int]], peak_flops: float, bandwidth: float,
                   bytes_per_element: int = 2) -> float:
    """Batch size at which a decode step through these [k, n] weights turns compute-bound.

    With B tokens: FLOPs = 2·B·P (P = Σ k·n), bytes = e·(P + B·Σ(k + n)) (weights once,
    activations in and out). Setting FLOPs/bytes equal to the ridge R = peak/bandwidth gives
    B = R·e·P / (2P − R·e·Σ(k + n)); about R·e/2 when activations are small next to weights.

    定义于 第3章 §3.2.4
    """
    if not weight_shapes:
        raise ValueError("weight_shapes is empty")
    ridge = peak_flops / bandwidth
    params = sum(k * n for k, n in weight_shapes)
    edges = sum(k + n for k, n in weight_shapes)
    denominator = 2 * params - ridge * bytes_per_element * edges
    if denominator <= 0:
        return float("inf")  # activations alone keep it memory-bound at every batch
    return ridge * bytes_per_element * params / denominator


def fit_knee(batches: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Fit t(B) = max(t0, c·B) to measured step times (least squares in log space).

    Returns (knee = t0/c, t0, c). A flat start (weights streamed once, whatever the batch)
    then a line through the origin (compute grows with the batch) is what the roofline predicts.

    定义于 第3章 §3.2.4
    """
    import math
    if len(batches) != len(seconds) or len(batches) < 3:
        raise ValueError("need at least 3 (batch, seconds) pairs of equal length")
    if min(batches) < 1 or min(seconds) <= 0:
        raise ValueError("batches must be >= 1 and times > 0")
    logs = [math.log(s) for s in seconds]
    best = (float("inf"), 0.0, 0.0)
    for t0 in seconds:
        for b, s in zip(batches, seconds):
            c = s / b
            err = sum((math.log(max(t0, c * bb)) - ls) ** 2 for bb, ls in zip(batches, logs))
            if err < best[0]:
                best = (err, t0, c)
    _, t0, c = best
    return t0 / c, t0, c
