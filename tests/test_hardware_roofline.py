"""Roofline placement, knee prediction and knee fitting against brute-force oracles."""
import random

import pytest
import torch

from common.hardware import measure_memory_bandwidth, measure_matmul_flops
from common.roofline import MatmulShape, fit_knee, place, predicted_knee


def test_place_matches_definition():
    peak, bw = 100e12, 2e12
    decode, prefill = MatmulShape(1, 4096, 4096), MatmulShape(4096, 4096, 4096)
    d, p = place(decode, peak, bw), place(prefill, peak, bw)
    assert d.memory_bound and not p.memory_bound
    assert d.attainable == pytest.approx(d.intensity * bw)
    assert p.attainable == peak
    assert d.time_floor == pytest.approx(decode.bytes_moved / bw)
    with pytest.raises(ValueError):
        place(decode, 0, bw)


def test_predicted_knee_is_where_intensity_meets_ridge():
    rng = random.Random(0)
    for _ in range(20):
        shapes = [(rng.randint(64, 4096), rng.randint(64, 4096)) for _ in range(rng.randint(1, 8))]
        peak, bw, e = rng.uniform(1e11, 1e15), rng.uniform(1e10, 1e13), rng.choice([1, 2, 4])
        knee = predicted_knee(shapes, peak, bw, e)
        if knee == float("inf"):
            continue
        flops = sum(2 * knee * k * n for k, n in shapes)
        bytes_ = sum(e * (k * n + knee * (k + n)) for k, n in shapes)
        assert flops / bytes_ == pytest.approx(peak / bw, rel=1e-9)
    with pytest.raises(ValueError):
        predicted_knee([], 1e12, 1e11)


def test_fit_knee_recovers_synthetic_knee():
    rng = random.Random(1)
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    for true_knee in (6.0, 20.0, 50.0):
        t0 = 0.01
        times = [max(t0, t0 / true_knee * b) * rng.uniform(1.0, 1.1) for b in batches]
        knee, _, _ = fit_knee(batches, times)
        assert true_knee / 2 < knee < true_knee * 2
    with pytest.raises(ValueError):
        fit_knee([1, 2], [1.0, 1.0])


def test_measurements_are_positive_and_validated():
    assert measure_matmul_flops(torch.float32, n=64, device="cpu", repeats=2) > 0
    for kind in ("copy", "read"):
        assert measure_memory_bandwidth(8 << 20, device="cpu", repeats=1, kind=kind) > 0
    with pytest.raises(ValueError):
        measure_memory_bandwidth(1 << 20, device="cpu", kind="write")
