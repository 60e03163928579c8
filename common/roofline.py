"""The roofline model: attainable FLOP/s = min(peak, intensity × bandwidth).

Used by chapter 3 (the machine's roofline) and chapter 5 (prefill vs decode matmuls).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MatmulShape:
    """[m, k] @ [k, n]: m tokens through a k→n weight."""
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
    return min(peak_flops, intensity * bandwidth)


def is_memory_bound(intensity: float, peak_flops: float, bandwidth: float) -> bool:
    return intensity < peak_flops / bandwidth


def predicted_time(shape: MatmulShape, peak_flops: float, bandwidth: float) -> float:
    """Roofline lower bound on the time of one matmul: the slower of compute and memory."""
    return max(shape.flops / peak_flops, shape.bytes_moved / bandwidth)
