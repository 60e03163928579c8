"""Exercise 8.5 (common.quant.alignment): logprob plumbing against transformers, the mismatch statistics
against their direct formulas, and the batch-invariance comparison on the tiny model."""
import math

import pytest
import torch

from common.engine import LLM, SamplingParams
from common.models import load_hf_model
from common.quant.alignment import (compare_runs, fake_quantize_weights, mismatch_stats, rescore_logprobs,
                                   sampled_logprobs)
from common.quant.rtn import quant_dequant


def _prompts(vocab: int, gen: torch.Generator, count: int) -> list[list[int]]:
    lengths = torch.randint(4, 40, (count,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def test_engine_logprobs_match_transformers_fp32(tiny, rng):
    """The engine's sampled-token logprobs (fp32, T=1) equal an fp32 transformers rescoring within 1e-4."""
    llm = LLM(tiny, dtype="float32", kv_cache_memory=32 << 20)
    hf = load_hf_model("tiny")
    prompts = _prompts(tiny.config.vocab_size, rng, 4)
    params = [SamplingParams(temperature=1.0, max_tokens=10, logprobs=0, seed=i, ignore_eos=True) for i in range(4)]
    for prompt, out in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        done = out.outputs[0]
        engine = torch.tensor(sampled_logprobs(done.token_ids, done.logprobs))
        trainer = rescore_logprobs(hf, prompt, done.token_ids)
        assert torch.allclose(engine, trainer, atol=1e-4, rtol=0), (engine - trainer).abs().max()


def test_mismatch_stats_match_direct_formulas(rng):
    train = -torch.rand(500, generator=rng, dtype=torch.float64) * 5
    rollout = train + torch.randn(500, generator=rng, dtype=torch.float64) * 0.5
    s = mismatch_stats(train, rollout, clip=2.0)
    d = (train - rollout).tolist()
    ratios = [math.exp(x) for x in d]
    assert s.n == 500
    assert s.abs_mean == pytest.approx(sum(abs(x) for x in d) / 500, rel=1e-9)
    assert s.abs_max == pytest.approx(max(abs(x) for x in d), rel=1e-9)
    assert s.kl_k1 == pytest.approx(sum(-x for x in d) / 500, rel=1e-9, abs=1e-12)
    assert s.kl_k3 == pytest.approx(sum(r - 1 - x for r, x in zip(ratios, d)) / 500, rel=1e-9)
    assert s.clipped_high == sum(r > 2 for r in ratios) / 500
    assert s.clipped_low == sum(r < 0.5 for r in ratios) / 500
    ordered = sorted(ratios)
    assert s.ratio_quantiles[0.5] == pytest.approx((ordered[249] + ordered[250]) / 2, rel=1e-9)
    assert 0 < s.clipped_high < 0.5 and 0 < s.clipped_low < 0.5   # sigma 0.5: some tokens beyond log 2
    with pytest.raises(ValueError):
        mismatch_stats(train, rollout[:-1])
    with pytest.raises(ValueError):
        mismatch_stats(train, rollout, clip=1.0)


def test_compare_runs_finds_first_divergence():
    same = compare_runs([1, 2, 3], [-0.5, -1.0, -2.0], [1, 2, 3], [-0.5, -1.0, -2.0])
    assert same.bitwise_equal and same.first_divergent_token is None and same.max_abs_diff == 0.0
    drift = compare_runs([1, 2, 3], [-0.5, -1.0, -2.0], [1, 2, 4], [-0.5, -1.25, -9.0])
    assert not drift.bitwise_equal and drift.first_divergent_token == 2
    assert drift.max_abs_diff == 0.25 and drift.compared_tokens == 2   # the token after the divergence is ignored
    shorter = compare_runs([1, 2, 3], [-0.5, -1.0, -2.0], [1, 2], [-0.5, -1.0])
    assert shorter.first_divergent_token == 2 and not shorter.bitwise_equal


def test_batch_invariance_on_tiny(tiny, rng):
    """A prompt alone vs inside a batch of 8: the same greedy tokens in fp32, logprobs within 1e-4
    (bitwise equality is what the notebook measures, not what the engine promises)."""
    llm = LLM(tiny, dtype="float32", kv_cache_memory=32 << 20, enable_prefix_caching=False)
    prompts = _prompts(tiny.config.vocab_size, rng, 8)
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=0, ignore_eos=True)
    alone = llm.generate([prompts[0]], params, use_tqdm=False)[0].outputs[0]
    batched = llm.generate(prompts, params, use_tqdm=False)[0].outputs[0]
    result = compare_runs(alone.token_ids, sampled_logprobs(alone.token_ids, alone.logprobs),
                          batched.token_ids, sampled_logprobs(batched.token_ids, batched.logprobs))
    assert result.first_divergent_token is None and result.compared_tokens == 12
    assert result.max_abs_diff < 1e-4


def test_fake_quantize_weights_rounds_every_projection():
    from common.models import load_model

    model = load_model("tiny", torch.float32)
    before = model.layers[0].self_attn.q_proj.weight.detach().clone()
    fake_quantize_weights(model, bits=8)
    after = model.layers[0].self_attn.q_proj.weight
    assert torch.equal(after, quant_dequant(before, 8, True, "channel"))
    assert not torch.equal(after, before)
    with pytest.raises(ValueError):
        fake_quantize_weights(torch.nn.Sequential(torch.nn.ReLU()))
