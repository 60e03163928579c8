"""Serving-time fusion (common.fused) computes the same function as the unfused model."""
from __future__ import annotations

import copy

import pytest
import torch

from common.fused import FusedLinear, can_prepack, fuse_for_serving
from common.models import load_model


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_model_matches_unfused(dtype, tol, rng):
    model = load_model("tiny", dtype)
    fused = fuse_for_serving(copy.deepcopy(model))
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=rng)
    with torch.inference_mode():
        ref, got = model(ids).float(), fused(ids).float()
    assert fused.layers[0].self_attn.qkv is not None and fused.head is not None
    assert (ref - got).abs().max().item() <= tol * max(1.0, ref.abs().max().item())


def test_fused_linear_splits_like_the_parts(rng):
    parts = [torch.randn(n, 32, generator=rng).to(torch.bfloat16) for n in (16, 8, 8)]
    x = torch.randn(5, 32, generator=rng).to(torch.bfloat16)
    outs = FusedLinear(*parts).split(x)
    for w, y in zip(parts, outs):
        assert torch.allclose(y.float(), (x @ w.T).float(), atol=1e-2, rtol=1e-2)
    assert FusedLinear(*parts).packed == can_prepack(parts[0])
    assert not can_prepack(parts[0].float())   # fp32 keeps F.linear (exactness vs transformers)


def test_fuse_is_idempotent():
    model = load_model("tiny", torch.float32)
    assert fuse_for_serving(fuse_for_serving(model)) is model
