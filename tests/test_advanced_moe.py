"""The from-scratch MoE block (common.advanced.moe) against transformers' MixtralSparseMoeBlock and vLLM-cpu's
cpu_fused_moe op, expert parallelism over 2 gloo processes against the single-process block, and MoEfication
of a dense MLP (all experts = the dense model exactly)."""
from __future__ import annotations

import random

import pytest
import torch

from common.advanced.expert_parallel import run_expert_parallel
from common.advanced.moe import (MoEBlock, capacity_keep, dropped_fraction, expert_capacity, load_balancing_loss,
                                 moe_forward, moe_param_counts, route, vllm_cpu_fused_moe_subprocess)
from common.advanced.moefy import cluster_neurons, moefy


def test_moe_block_equals_mixtral(rng):
    experts = random.choice([4, 8])
    block = MoEBlock.random(32, 48, experts, random.randint(1, 3), generator=rng)
    x = torch.randn(2, random.randint(1, 20), 32, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.to_mixtral()(x), atol=1e-5, rtol=1e-5)


def test_load_balancing_loss_equals_transformers(rng):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    logits = torch.randn(random.randint(2, 50), 8, generator=rng) * 2
    top_k = random.randint(1, 3)
    assert load_balancing_loss(logits, top_k).item() == pytest.approx(
        load_balancing_loss_func((logits,), 8, top_k).item(), rel=1e-5)


def test_capacity_drops_only_overflow(rng):
    ids = route(torch.randn(64, 4, generator=rng) + torch.tensor([3.0, 0, 0, 0]), 2)[1]
    cap = expert_capacity(64, 4, 2, 1.0)
    keep = capacity_keep(ids, 4, cap)
    assert torch.bincount(ids[keep], minlength=4).max() <= cap
    assert dropped_fraction(ids, 4, 1.0) == pytest.approx(1 - keep.float().mean().item())
    assert dropped_fraction(ids, 4, 1.0) > dropped_fraction(ids, 4, 4.0) == 0.0


def test_mixtral_parameter_count():
    counts = moe_param_counts(32, 4096, 14336, 8, 2, 32, 8, 128, 32000)
    assert counts["total"] == pytest.approx(46.7e9, rel=0.01) and counts["active"] == pytest.approx(12.9e9, rel=0.01)


def test_expert_parallel_equals_single_process(rng):
    block = MoEBlock.random(32, 64, 4, 2, generator=rng).requires_grad_(False)
    x = torch.randn(24, 32, generator=rng)
    single, logits = moe_forward(x, block.router, block.gate_up, block.down, 2)
    out, stats = run_expert_parallel(x, block.router, block.gate_up, block.down, 2, world=2)
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)
    ids = route(logits, 2)[1]
    remote = [int(((torch.arange(24)[:, None] // 12 == r) & (ids // 2 != r)).sum()) for r in range(2)]
    assert [s["remote_assignments"] for s in stats] == remote
    assert [s["dispatch_bytes_sent"] for s in stats] == [n * 32 * 4 for n in remote]


def test_vllm_cpu_fused_moe_equals_ours(rng):
    pytest.importorskip("vllm")
    block = MoEBlock.random(64, 96, 8, 2, generator=rng).requires_grad_(False)
    x = torch.randn(16, 64, generator=rng)
    ours, logits = moe_forward(x, block.router, block.gate_up, block.down, 2)
    weights, ids = route(logits, 2)
    theirs = vllm_cpu_fused_moe_subprocess(x, block.gate_up, block.down, weights, ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_moefy_all_experts_is_dense_and_groups_partition():
    from common.models import load_model

    model = load_model("tiny", torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 32))
    groups = cluster_neurons(model.layers[0].mlp, 4)
    assert sorted(groups.reshape(-1).tolist()) == list(range(model.config.intermediate_size))
    with torch.no_grad():
        dense = model(ids)
        moes = moefy(model, torch.randint(0, model.config.vocab_size, (1, 32)), num_experts=4)
        torch.testing.assert_close(model(ids), dense, atol=1e-5, rtol=1e-5)
        for m in moes:
            m.top_k = 1
        assert (model(ids) - dense).abs().max() > 1e-3
