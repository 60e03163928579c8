"""The fused CPU kernels of the serving layout against the eager bf16 ops they replace.

Each kernel rounds where the eager ops round, so outputs are bit-identical except where a sum's order
differs (the RMS statistic): there at most one bf16 step (2^-7 relative) on a small fraction of elements.
The whole fused bf16 model is then checked against the teaching layout on SmolLM2's real weights.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.model import cpu_ops
from common.model.layers import RMSNorm, apply_rope

pytestmark = pytest.mark.skipif(not cpu_ops.cpu_ops_available(), reason="no C++ compiler for the CPU kernels")
BF16_STEP = 2 ** -7     # one bf16 rounding step, relative


def _rms_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = RMSNorm(x.shape[-1], eps)
    norm.weight.data = weight
    return norm(x)


def _assert_within_one_step(got: torch.Tensor, ref: torch.Tensor, max_fraction: float) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    differ = got != ref
    assert differ.float().mean() <= max_fraction, f"{int(differ.sum())} of {ref.numel()} elements differ"
    torch.testing.assert_close(got.float(), ref.float(), atol=1e-6, rtol=BF16_STEP)


@torch.no_grad()
def test_rms_norm_and_add_rms_norm(rng):
    x = (torch.randn(7, 576, generator=rng) * 3).bfloat16()
    residual = torch.randn(7, 576, generator=rng).bfloat16()
    weight = (1 + torch.randn(576, generator=rng) / 4).bfloat16()
    _assert_within_one_step(cpu_ops.rms_norm(x, weight, 1e-5), _rms_reference(x, weight, 1e-5), 0.02)
    h, y = cpu_ops.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(h, residual + x)            # the residual add is one bf16 rounding, exactly as eager
    _assert_within_one_step(y, _rms_reference(residual + x, weight, 1e-5), 0.02)


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3])
def test_rope_in_place_equals_apply_rope(batch, rng):
    hq, hkv, dim, tokens = 9, 3, 64, 11
    qkv = torch.randn(batch, tokens, (hq + 2 * hkv) * dim, generator=rng).bfloat16()
    angles = torch.randint(0, 2048, (tokens, 1), generator=rng) * torch.rand(1, dim // 2, generator=rng)
    cos, sin = torch.cat([angles, angles], -1).cos().bfloat16(), torch.cat([angles, angles], -1).sin().bfloat16()
    q, k, v = qkv.split([hq * dim, hkv * dim, hkv * dim], -1)
    ref_q = apply_rope(q.view(batch, tokens, hq, dim).transpose(1, 2), cos, sin)
    ref_k = apply_rope(k.view(batch, tokens, hkv, dim).transpose(1, 2), cos, sin)
    v_before = v.clone()
    cpu_ops.rope_(qkv, cos, sin, hq + hkv, dim)
    assert torch.equal(q.view(batch, tokens, hq, dim).transpose(1, 2), ref_q)
    assert torch.equal(k.view(batch, tokens, hkv, dim).transpose(1, 2), ref_k)
    assert torch.equal(v, v_before)                # v is not rotated


@torch.no_grad()
def test_silu_and_mul(rng):
    gate_up = (torch.randn(2, 5, 2 * 1536, generator=rng) * 4).bfloat16()
    gate, up = gate_up.split(1536, -1)
    _assert_within_one_step(cpu_ops.silu_and_mul(gate_up), F.silu(gate) * up, 0.02)


@pytest.mark.parametrize("vocab", [5, 16, 49152, 1003])
def test_argmax_rows_equals_torch_argmax(vocab, rng):
    # few distinct values: many ties, which must resolve to the first index as torch.argmax does
    x = torch.randint(-4, 4, (9, vocab), generator=rng).bfloat16()
    x[1] = float("-inf")                                   # all -inf: index 0
    x[2, vocab // 2] = float("nan")                        # a NaN counts as the largest
    x[3, vocab - 1] = float("nan")
    x[3, 0] = float("inf")
    x[4] = (torch.randn(vocab, generator=rng) * 8).bfloat16()
    assert torch.equal(cpu_ops.argmax_rows(x), x.float().argmax(-1))
    view = x[:, 1:]                                        # a strided view, one element shorter
    assert torch.equal(cpu_ops.argmax_rows(view), view.float().argmax(-1))


def test_bad_inputs_are_refused(rng):
    x = torch.randn(3, 8, generator=rng)
    with pytest.raises(RuntimeError, match="bf16"):
        cpu_ops.rms_norm(x, torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="same shape"):
        cpu_ops.add_rms_norm(x.bfloat16(), x[:2].bfloat16(), torch.ones(8).bfloat16(), 1e-5)
    with pytest.raises(RuntimeError, match="do not match"):
        cpu_ops.rope_(torch.zeros(1, 5, 64).bfloat16(), torch.zeros(4, 16).bfloat16(), torch.zeros(4, 16).bfloat16(),
                      2, 16)
    with pytest.raises(RuntimeError, match="rows, n"):
        cpu_ops.argmax_rows(torch.zeros(2, 3, 4).bfloat16())
    with pytest.raises(RuntimeError, match="rows, n"):
        cpu_ops.argmax_rows(torch.zeros(2, 0).bfloat16())


@torch.inference_mode()
def test_fused_bf16_model_is_as_close_to_fp32_as_eager_bf16():
    """SmolLM2: the fused serving model in bf16 (kernels on) and the teaching layout in bf16 (eager ops), each
    against the fp32 model on the same weights. The kernels may round differently, never worse: the fused
    model's greedy agreement with fp32 is within 5 points of eager bf16's and its largest logit error within
    1.5x (random tokens make flat distributions, so bf16 alone already moves some argmaxes)."""
    from common.models import load_model

    ids = torch.randint(3, 49152, (2, 48), generator=torch.Generator().manual_seed(0))
    ref = load_model("smollm2-135m", torch.float32)(ids)
    scores = {}
    for name, model in (("eager", load_model("smollm2-135m", torch.bfloat16)),
                        ("fused", load_model("smollm2-135m", torch.bfloat16, fused=True))):
        logits = model(ids).float()
        scores[name] = ((logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                        ((logits - ref).abs().max() / ref.abs().max()).item())
    assert scores["fused"][0] >= scores["eager"][0] - 0.05, scores
    assert scores["fused"][1] <= 1.5 * scores["eager"][1], scores
