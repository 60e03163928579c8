"""The bf16 GEMM of the serving layout (common.model.packed_gemm) against an fp32 matmul of the same bf16 inputs.

The kernel's products are exact and its sums fp32, rounded once to bf16: so each output is within half a bf16
step of the fp32 reference, plus the fp32 error of a different summation order (bounded by a few ulps of the
sum of |products|). Shapes cover every tile: row counts around the 8-row tile, groups of 48 columns with a 16- or
32-column tail, K not a multiple of 32.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.model.fused import PrepackedLinear
from common.model.packed_gemm import can_pack, pack_weight, packed_gemm, packed_gemm_available

pytestmark = pytest.mark.skipif(not packed_gemm_available(), reason="no C++ compiler or no AVX512-BF16")
BF16_HALF_STEP = 2 ** -8     # round to nearest: half a bf16 step, at most 2^-8 of the value (bf16 keeps 8 bits)


def _assert_close_to_fp32(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    ref = x.float() @ w.float().T
    bound = ref.abs() * BF16_HALF_STEP + 1e-5 * (x.float().abs() @ w.float().abs().T) + 1e-30
    err = (got.float() - ref).abs()
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    assert (err <= bound).all(), f"max error {err.max():.3g}, worst excess {(err - bound).max():.3g}"


@torch.no_grad()
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 13, 64])
@pytest.mark.parametrize("n,k", [(16, 2), (32, 34), (48, 576), (80, 1000), (960, 576), (576, 1536)])
def test_packed_gemm_matches_fp32_matmul(rows, n, k, rng):
    x = torch.randn(rows, k, generator=rng).bfloat16()
    w = (torch.randn(n, k, generator=rng) / k ** 0.5).bfloat16()
    packed = pack_weight(w)
    _assert_close_to_fp32(packed_gemm(x, packed, n), x, w)
    _assert_close_to_fp32(packed_gemm(x[None], packed, n)[0], x, w)   # leading dims are kept: [1, M, K] -> [1, M, N]


@torch.no_grad()
def test_packing_is_a_permutation_of_the_weight(rng):
    w = torch.randn(80, 6, generator=rng).bfloat16()   # one group of 48 columns, then a tail of 32
    packed = pack_weight(w)
    assert packed.shape == (80 * 6,) and torch.equal(packed.sort().values, w.flatten().sort().values)
    # first line of the first group: column 0's (k0, k1), column 1's (k0, k1), ...
    assert torch.equal(packed[:4], torch.stack([w[0, 0], w[0, 1], w[1, 0], w[1, 1]]))
    # the tail group starts after 48 * 6 elements, laid out [K/2][32][2]
    assert torch.equal(packed[48 * 6: 48 * 6 + 2], w[48, :2])


@torch.no_grad()
def test_prepacked_linear_runs_the_kernel_at_every_batch_size(rng):
    linear = PrepackedLinear(576, 960).bfloat16()
    linear.weight.data = (torch.randn(960, 576, generator=rng) / 24).bfloat16()
    for rows in (1, 2, 3, 9, 100):
        x = torch.randn(1, rows, 576, generator=rng).bfloat16()
        got = linear(x)
        assert torch.equal(got, packed_gemm(x, pack_weight(linear.weight), 960))
        _assert_close_to_fp32(got[0], x[0], linear.weight)
        torch.testing.assert_close(got, F.linear(x, linear.weight), rtol=2 ** -7, atol=2e-2)


@torch.no_grad()
def test_linear_with_bias_or_fp32_or_odd_shape_keeps_f_linear(rng):
    biased = PrepackedLinear(64, 32, bias=True).bfloat16()
    fp32 = PrepackedLinear(64, 32)
    odd = PrepackedLinear(64, 40).bfloat16()   # 40 output columns: not whole 16-column vectors
    assert biased.packed_weight is None and fp32.packed_weight is None and odd.packed_weight is None
    assert not can_pack(odd.weight)
    x = torch.randn(1, 64, generator=rng)
    torch.testing.assert_close(fp32(x), F.linear(x, fp32.weight))
    torch.testing.assert_close(odd(x.bfloat16()), F.linear(x.bfloat16(), odd.weight))


def test_bad_inputs_are_clear_errors():
    packed = pack_weight(torch.zeros(16, 32, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="contiguous bf16 CPU tensors"):
        packed_gemm(torch.zeros(1, 32), packed, 16)
    with pytest.raises(RuntimeError, match="does not fit N = 16"):
        packed_gemm(torch.zeros(1, 30, dtype=torch.bfloat16), packed, 16)
    with pytest.raises(ValueError, match="cannot pack"):
        pack_weight(torch.zeros(20, 32, dtype=torch.bfloat16))
