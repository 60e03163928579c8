"""Random test inputs that are fresh every run yet reproducible: a pytest fixture and report hook.

tests/conftest.py and labs/conftest.py import both names. Each test draws one seed (or takes TEST_SEED),
seeds Python's `random` and torch's default generator with it, and a failing test that drew random numbers
prints "rng seed: N (reproduce: TEST_SEED=N pytest <test id>)" in its report.
"""
from __future__ import annotations

import inspect
import os
import random
import secrets

import pytest
import torch

SEED_ENV = "TEST_SEED"
_SEED_ATTR = "_test_seed"
_SEEDED_FIXTURES = {"rng", "rnd"}


@pytest.fixture(autouse=True)
def rng_seed(request) -> int:
    """This test's seed (TEST_SEED if set, else fresh), already applied to `random` and `torch`.

    本书无对应章节（工具）
    """
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
    """pytest hook: add the seed to a failing seeded test's report, so the failure can be replayed.

    本书无对应章节（工具）
    """
    outcome = yield
    report = outcome.get_result()
    seeded = getattr(item, _SEED_ATTR, None)
    if not report.failed or seeded is None:
        return
    value, py_state, torch_state = seeded
    # name the seed when the test drew from it: it asked for it, or `random` / torch moved on
    function = getattr(item, "function", None)
    asked = bool(_SEEDED_FIXTURES & set(item.fixturenames)) or (
        function is not None and "rng_seed" in inspect.signature(function).parameters)
    moved = random.getstate() != py_state or not torch.equal(torch.get_rng_state(), torch_state)
    if asked or moved or report.when != "call":
        reproduce = f"{SEED_ENV}={value} pytest '{item.nodeid}'"
        report.sections.append(("rng seed", f"rng seed: {value}  (reproduce: {reproduce})"))
