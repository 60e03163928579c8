"""The bf16 GEMV kernel (common.model.gemv) against an fp32 matmul of the same bf16 inputs.

The kernel's products are exact and its sums fp32, rounded once to bf16: so each output is within half a bf16
step of the fp32 reference, plus the fp32 error of a different summation order (bounded by a few ulps of the
sum of |products|). Shapes cover the tails: N not a multiple of the 16-row item, K not a multiple of 32.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.model.fused import PrepackedLinear
from common.model.gemv import GEMV_MAX_ROWS, gemv, gemv_available

pytestmark = pytest.mark.skipif(not gemv_available(), reason="no C++ compiler or no AVX512-BF16")
BF16_HALF_STEP = 2 ** -8     # round to nearest: half a bf16 step, at most 2^-8 of the value (bf16 keeps 8 bits)


def _assert_close_to_fp32(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    ref = x.float() @ w.float().T
    bound = ref.abs() * BF16_HALF_STEP + 1e-5 * (x.float().abs() @ w.float().abs().T) + 1e-30
    err = (got.float() - ref).abs()
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    assert (err <= bound).all(), f"max error {err.max():.3g}, worst excess {(err - bound).max():.3g}"


@torch.no_grad()
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("n,k", [(1, 7), (15, 32), (16, 576), (33, 1000), (960, 576), (576, 1536)])
def test_gemv_matches_fp32_matmul(rows, n, k, rng):
    x = torch.randn(rows, k, generator=rng).bfloat16()
    w = (torch.randn(n, k, generator=rng) / k ** 0.5).bfloat16()
    _assert_close_to_fp32(gemv(x, w), x, w)
    _assert_close_to_fp32(gemv(x[None], w)[0], x, w)    # leading dims are kept: [1, rows, K] -> [1, rows, N]


@torch.no_grad()
def test_prepacked_linear_takes_the_kernel_at_one_or_two_rows_only(rng):
    linear = PrepackedLinear(576, 960).bfloat16()
    linear.weight.data = (torch.randn(960, 576, generator=rng) / 24).bfloat16()
    for rows in range(1, GEMV_MAX_ROWS + 3):
        x = torch.randn(1, rows, 576, generator=rng).bfloat16()
        got = linear(x)
        if rows <= GEMV_MAX_ROWS:
            assert torch.equal(got, gemv(x, linear.weight))
        _assert_close_to_fp32(got[0], x[0], linear.weight)   # oneDNN above the threshold: the same bound holds
        torch.testing.assert_close(got, F.linear(x, linear.weight), rtol=2 ** -7, atol=2e-2)


@torch.no_grad()
def test_linear_with_bias_or_fp32_keeps_its_path(rng):
    biased = PrepackedLinear(64, 32, bias=True).bfloat16()
    fp32 = PrepackedLinear(64, 32)
    assert biased.gemv_max_numel == 0 and fp32.gemv_max_numel == 0
    x = torch.randn(1, 64, generator=rng)
    torch.testing.assert_close(fp32(x), F.linear(x, fp32.weight))


def test_bad_inputs_are_clear_errors():
    w = torch.zeros(16, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="contiguous bf16 CPU tensors"):
        gemv(torch.zeros(1, 32), w)
    with pytest.raises(RuntimeError, match="has 31 features but w has 32"):
        gemv(torch.zeros(1, 31, dtype=torch.bfloat16), w)
