"""The reservation simulator: worst-case never preempts, on-demand admits most, β learns the ratio."""
import random

import pytest

from common.sim.reservation import SimRequest, simulate


def _trace(rng, n=60, ratio=0.3):
    out = []
    for _ in range(n):
        mt = rng.randint(40, 120)
        out.append(SimRequest(rng.randint(8, 64), mt, max(1, min(mt, round(mt * rng.uniform(0, 2 * ratio))))))
    return out


def test_policies_order_concurrency_and_preemptions():
    rng = random.Random(random.randint(0, 10**6))
    trace = _trace(rng)
    worst, beta, demand = (simulate(trace, 80, 16, p) for p in ("worst", "beta", "on_demand"))
    assert worst.preemptions == 0
    assert worst.mean_running <= beta.mean_running + 1e-9
    assert beta.betas[-1] < 0.6                     # learned from the true ratio (~0.3 × 1.2), not the cap
    assert demand.mean_running >= worst.mean_running


def test_single_request_and_errors():
    r = simulate([SimRequest(10, 5, 5)], 4, 16, "worst")
    assert r.steps == 5 and r.preemptions == 0
    with pytest.raises(ValueError, match="policy"):
        simulate([SimRequest(10, 5, 5)], 4, 16, "magic")
    with pytest.raises(ValueError, match="cannot fit"):
        simulate([SimRequest(100, 100, 5)], 4, 16, "worst")
    with pytest.raises(ValueError, match="bad request"):
        simulate([SimRequest(10, 5, 6)], 4, 16, "worst")
