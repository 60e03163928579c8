import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET when it is first imported; whichever test imports it first
    # (directly or through torch) must already see it, or later kernels fail to launch on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common.models import load_hf_model, load_model
from common.seeds import pytest_runtest_makereport, rng_seed  # noqa: F401  (seeded random inputs)


@pytest.fixture(scope="session", params=["tiny", "smollm2-135m"])
def model_pair(request):
    """(from-scratch model, transformers model) on the same weights, fp32, CPU."""
    return request.param, load_model(request.param), load_hf_model(request.param)


@pytest.fixture
def rng(rng_seed) -> torch.Generator:  # noqa: F811  (pytest injects the imported fixture)
    """Fresh random inputs every run, from this test's seed (printed in the report when the test fails)."""
    return torch.Generator().manual_seed(rng_seed)


@pytest.fixture(scope="module")
def tiny():
    """The random 3-layer `tiny` model (fp32, CPU), shared by the tests of one module.

    Module scope, so every test module starts from a freshly loaded, unfused model (`common.engine.LLM` runs
    a given model as it is; tests that change the model themselves, e.g. quantize it, load their own)."""
    return load_model("tiny", torch.float32)
