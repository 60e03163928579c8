import inspect
import os
import random
import secrets
from pathlib import Path
from types import ModuleType

import pytest
import torch

from labs.impl import load_impl

# The labs' random cases are fresh every run, but reproducible: each test draws one seed and seeds
# Python's `random` and torch's default generator with it (the `rnd` fixtures build on it too); a failing
# test prints the seed in its report. Rerun with it: TEST_SEED=<seed> pytest <test id>.
SEED_ENV = "TEST_SEED"
_SEED_ATTR = "_lab_seed"


@pytest.fixture(scope="module")
def impl(request) -> ModuleType:
    """The implementation under test (see labs/impl.py)."""
    return load_impl(Path(request.module.__file__).parent)


@pytest.fixture(autouse=True)
def rng_seed(request) -> int:
    """This test's seed (TEST_SEED if set, else fresh), already applied to `random` and `torch`."""
    value = int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else secrets.randbelow(2**31 - 1)
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):  # torch's generator is restored after the test
        random.seed(value)
        torch.manual_seed(value)
        setattr(request.node, _SEED_ATTR, (value, random.getstate(), torch.get_rng_state()))
        yield value
    random.setstate(state)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeded = getattr(item, _SEED_ATTR, None)
    if not report.failed or seeded is None:
        return
    value, py_state, torch_state = seeded
    # name the seed when the test drew from it: `random` or torch moved on, or it asked for the seed
    asked = "rnd" in item.fixturenames or "rng_seed" in inspect.signature(item.function).parameters
    moved = random.getstate() != py_state or not torch.equal(torch.get_rng_state(), torch_state)
    if asked or moved or report.when != "call":
        report.sections.append(("rng seed", f"rng seed: {value}  (reproduce: {SEED_ENV}={value} pytest '{item.nodeid}')"))
