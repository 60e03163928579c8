"""Roofline placement, knee prediction and knee fitting against brute-force oracles."""
import random

import pytest
import torch

import common.hardware.machine as hardware
from common.hardware.batch_sweep import time_weight_stream, weight_stream
from common.hardware.machine import last_level_cache_bytes, measure_memory_bandwidth, measure_matmul_flops
from common.hardware.roofline import MatmulShape, fit_knee, place, predicted_knee


def test_place_agrees_with_the_time_view():
    """Intensity view (min(peak, I·bw)) and time view (FLOPs / slower of compute and memory) must agree."""
    rng = random.Random(2)
    peak, bw = 100e12, 2e12
    for _ in range(50):
        shape = MatmulShape(rng.choice([1, 3, 64, 512, 4096]), rng.randint(16, 8192), rng.randint(16, 8192),
                            rng.choice([1, 2, 4]))
        pt = place(shape, peak, bw)
        compute_s, memory_s = shape.flops / peak, shape.bytes_moved / bw
        assert pt.attainable == pytest.approx(shape.flops / max(compute_s, memory_s))
        assert pt.memory_bound == (memory_s > compute_s)
    decode, prefill = MatmulShape(1, 4096, 4096), MatmulShape(4096, 4096, 4096)
    assert place(decode, peak, bw).memory_bound and not place(prefill, peak, bw).memory_bound
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


def _fake_clock(monkeypatch, tick=1e-3):
    """Every perf_counter() call advances 1 ms: each timed call then takes exactly one tick."""
    state = {"t": 0.0}

    def perf_counter():
        state["t"] += tick         # stop - start of one timed call = one tick
        return state["t"]
    monkeypatch.setattr(hardware.time, "perf_counter", perf_counter)


def test_measurements_count_bytes_and_flops_as_documented(monkeypatch):
    _fake_clock(monkeypatch)
    n = 64
    assert measure_matmul_flops(torch.float32, n=n, device="cpu", repeats=2) == pytest.approx(2 * n**3 / 1e-3)
    nbytes = 8 << 20                   # two 4 MiB pieces, one tick each
    copy = measure_memory_bandwidth(nbytes, device="cpu", repeats=1, kind="copy")
    read = measure_memory_bandwidth(nbytes, device="cpu", repeats=1, kind="read")
    assert read == pytest.approx(nbytes / 2e-3)
    assert copy == pytest.approx(2 * read)       # copy counts read + write (STREAM)
    with pytest.raises(ValueError):
        measure_memory_bandwidth(1 << 20, device="cpu", kind="write")


def test_weight_stream_exceeds_the_cache_and_times_every_weight(monkeypatch):
    weights = [torch.randn(96, 64) for _ in range(3)]
    stream = weight_stream(weights, 10 * 96 * 64 * 4)
    assert len(stream) == 10 and all(s.shape == (96, 64) for s in stream)
    assert all(torch.equal(stream[i], weights[i % 3]) for i in range(10))
    assert stream[3] is not weights[0]            # copies, so each is a separate stretch of memory
    assert weight_stream(weights, 1) == weights
    _fake_clock(monkeypatch)
    assert time_weight_stream(stream, m=1, rounds=2) == pytest.approx(10 * 1e-3)   # one tick per weight
    with pytest.raises(ValueError):
        weight_stream([], 1)


def test_last_level_cache_is_a_plausible_size():
    size = last_level_cache_bytes("cpu")
    assert 256 << 10 <= size <= 4 << 30

