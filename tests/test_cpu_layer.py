"""A serving-layout layer in two C++ calls (common.model.cpu_layer) computes exactly what its kernels compute one
by one, and the model takes that path only when every linear of the layer is packed."""
from __future__ import annotations

import pytest
import torch

from common.model import cpu_layer, cpu_ops
from common.model.packed_gemm import pack_weight, packed_gemm
from common.models import load_model
from common.quant.qlinear import quantize_model

pytestmark = pytest.mark.skipif(not cpu_layer.cpu_layer_available(), reason="no C++ compiler or no AVX512-BF16")
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 64, 4, 2, 16, 96


def _weights(rng: torch.Generator) -> dict[str, torch.Tensor]:
    def w(n: int, k: int) -> torch.Tensor:
        return (torch.randn(n, k, generator=rng) / k ** 0.5).bfloat16()
    return {"qkv": w((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN), "o": w(HIDDEN, HEADS * HEAD_DIM),
            "gate_up": w(2 * INTERMEDIATE, HIDDEN), "down": w(HIDDEN, INTERMEDIATE),
            "norm1": (1 + torch.randn(HIDDEN, generator=rng) / 10).bfloat16(),
            "norm2": (1 + torch.randn(HIDDEN, generator=rng) / 10).bfloat16()}


@torch.inference_mode()
@pytest.mark.parametrize("rows", [1, 5, 37])
def test_two_calls_equal_the_kernels_one_by_one(rows, rng):
    w, eps = _weights(rng), 1e-5
    packed = {name: pack_weight(w[name]) for name in ("qkv", "o", "gate_up", "down")}
    x = torch.randn(1, rows, HIDDEN, generator=rng).bfloat16()
    angles = torch.rand(rows, HEAD_DIM, generator=rng) * 6
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()

    qkv = packed_gemm(cpu_ops.rms_norm(x, w["norm1"], eps), packed["qkv"], w["qkv"].shape[0])
    cpu_ops.rope_(qkv, cos, sin, HEADS + KV_HEADS, HEAD_DIM)
    got_qkv = cpu_layer.attention_input(x, w["norm1"], eps, packed["qkv"], cos, sin, HEADS + KV_HEADS, HEAD_DIM)
    assert torch.equal(got_qkv, qkv)

    attn = torch.randn(1, rows, HEADS * HEAD_DIM, generator=rng).bfloat16()
    h, normed = cpu_ops.add_rms_norm(packed_gemm(attn, packed["o"], HIDDEN), x, w["norm2"], eps)
    gate_up = packed_gemm(normed, packed["gate_up"], 2 * INTERMEDIATE)
    expected = h + packed_gemm(cpu_ops.silu_and_mul(gate_up), packed["down"], HIDDEN)
    got = cpu_layer.attention_output_and_mlp(attn, x, packed["o"], w["norm2"], eps, packed["gate_up"], packed["down"])
    assert torch.equal(got, expected)


@torch.inference_mode()
def test_the_model_takes_two_calls_per_layer_only_when_its_linears_are_packed(monkeypatch, rng):
    calls = []
    original = cpu_layer.attention_input
    monkeypatch.setattr(cpu_layer, "attention_input", lambda *a: calls.append(1) or original(*a))
    fused = load_model("tiny", torch.bfloat16, fused=True)
    ids = torch.randint(0, fused.config.vocab_size, (1, 9), generator=rng)
    reference = load_model("tiny", torch.bfloat16)   # the teaching layout: eager ops, oneDNN matmuls
    torch.testing.assert_close(fused(ids).float(), reference(ids).float(), rtol=0, atol=2e-2)
    assert len(calls) == fused.config.num_hidden_layers
    assert all(layer.packed_linears() is not None for layer in fused.layers)

    calls.clear()
    quantize_model(fused, bits=8, granularity=32)   # linears replaced: not packed, so the op-by-op path runs
    assert all(layer.packed_linears() is None for layer in fused.layers)
    fused(ids)
    assert calls == []
