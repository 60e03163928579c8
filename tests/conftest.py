import os
import random
import secrets

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET when it is first imported; whichever test imports it first
    # (directly or through torch) must already see it, or later kernels fail to launch on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common.models import load_hf_model, load_model

# Random test inputs are fresh every run, but never unreproducible: each test draws one seed, seeds
# Python's `random` and the `rng` fixture with it, and a failing test prints it in its report
# ("rng seed" section). Rerun with that seed: TEST_SEED=<seed> pytest <test id>.
SEED_ENV = "TEST_SEED"
_SEED_ATTR = "_test_seed"


@pytest.fixture(autouse=True)
def rng_seed(request) -> int:
    """This test's seed (TEST_SEED if set, else fresh); Python's global `random` is seeded with it."""
    value = int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else secrets.randbelow(2**31 - 1)
    state = random.getstate()
    random.seed(value)
    setattr(request.node, _SEED_ATTR, (value, random.getstate()))
    yield value
    random.setstate(state)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeded = getattr(item, _SEED_ATTR, None)
    if not report.failed or seeded is None:
        return
    value, untouched = seeded
    # name the seed when the test drew from it: the `rng` fixture, or Python's `random` moved on
    if "rng" in item.fixturenames or random.getstate() != untouched or report.when != "call":
        report.sections.append(("rng seed", f"rng seed: {value}  (reproduce: {SEED_ENV}={value} pytest '{item.nodeid}')"))


@pytest.fixture(scope="session", params=["tiny", "smollm2-135m"])
def model_pair(request):
    """(from-scratch model, transformers model) on the same weights, fp32, CPU."""
    return request.param, load_model(request.param), load_hf_model(request.param)


@pytest.fixture
def rng(rng_seed) -> torch.Generator:
    """Fresh random inputs every run, from this test's seed (printed in the report when the test fails)."""
    return torch.Generator().manual_seed(rng_seed)
