"""The engine against plain greedy decoding (same weights, fp32): ragged batches, chunked
prefill, preemption under a tiny KV pool, prefix caching, policies and the clear errors."""
import pytest
import torch

from common.engine import LLM, SamplingParams
from common.model.generate import greedy_generate

GREEDY = dict(temperature=0.0, ignore_eos=True)


def _prompts(rng, lengths, vocab=49152):
    return [torch.randint(0, vocab, (n,), generator=rng).tolist() for n in lengths]


def _reference(model, prompts, max_tokens):
    return [greedy_generate(model, p, max_tokens) for p in prompts]


def test_ragged_batch_with_chunked_prefill_matches_greedy(tiny, rng):
    prompts = _prompts(rng, [3, 37, 70, 16, 1, 49])
    llm = LLM(tiny, num_blocks=64, block_size=8, max_num_batched_tokens=32, enable_prefix_caching=False)
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, **GREEDY), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == _reference(tiny, prompts, 12)
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    mixed = [s for s in llm.stats if s.num_decode and s.num_prefill]
    assert mixed, "decodes and prefill chunks never shared a step"
    assert max(s.num_tokens for s in llm.stats) <= 32


def test_tiny_pool_preempts_and_keeps_outputs(tiny, rng):
    prompts = _prompts(rng, [20, 25, 30, 18, 22])
    llm = LLM(tiny, num_blocks=12, block_size=8, max_num_batched_tokens=64)
    outs = llm.generate(prompts, SamplingParams(max_tokens=40, **GREEDY), use_tqdm=False)
    assert sum(s.num_preempted for s in llm.stats) > 0
    assert [o.outputs[0].token_ids for o in outs] == _reference(tiny, prompts, 40)
    assert llm.block_manager.num_free_blocks == llm.num_blocks


def test_prefix_cache_hits_and_same_outputs(tiny, rng):
    shared = _prompts(rng, [40])[0]
    prompts = [shared + tail for tail in _prompts(rng, [5, 9])]
    llm = LLM(tiny, num_blocks=64, block_size=8, enable_prefix_caching=True)
    first = llm.generate(prompts[:1], SamplingParams(max_tokens=6, **GREEDY), use_tqdm=False)
    second = llm.generate(prompts[1:], SamplingParams(max_tokens=6, **GREEDY), use_tqdm=False)
    assert second[0].num_cached_tokens == 40
    assert [o.outputs[0].token_ids for o in first + second] == _reference(tiny, prompts, 6)


def test_no_chunking_runs_each_prefill_whole(tiny, rng):
    prompts = _prompts(rng, [30, 30, 30])
    llm = LLM(tiny, num_blocks=64, block_size=8, max_num_batched_tokens=40, enable_chunked_prefill=False)
    outs = llm.generate(prompts, SamplingParams(max_tokens=4, **GREEDY), use_tqdm=False)
    assert all(s.num_prefill_tokens in (0, 30) for s in llm.stats)
    assert [o.outputs[0].token_ids for o in outs] == _reference(tiny, prompts, 4)


def test_priority_policy_serves_urgent_first(tiny, rng):
    prompts = _prompts(rng, [10, 10, 10])
    llm = LLM(tiny, num_blocks=64, block_size=8, max_num_seqs=1, scheduling_policy="priority")
    outs = llm.generate(prompts, SamplingParams(max_tokens=3, **GREEDY), priority=[5, 0, 9], use_tqdm=False)
    order = sorted(range(3), key=lambda i: outs[i].outputs[0].metrics.finished_time)
    assert order == [1, 0, 2]


def test_sjf_serves_short_jobs_first(tiny, rng):
    prompts = _prompts(rng, [50, 5, 20])
    llm = LLM(tiny, num_blocks=64, block_size=8, max_num_seqs=1, scheduling_policy="sjf")
    outs = llm.generate(prompts, SamplingParams(max_tokens=3, **GREEDY), use_tqdm=False)
    order = sorted(range(3), key=lambda i: outs[i].outputs[0].metrics.finished_time)
    assert order == [1, 2, 0]


def test_stop_tokens_min_tokens_and_n(tiny, rng):
    prompt = _prompts(rng, [12])[0]
    ref = greedy_generate(tiny, prompt, 10)
    llm = LLM(tiny, num_blocks=64, block_size=8)
    out = llm.generate([prompt], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[ref[3]]),
                       use_tqdm=False)[0].outputs[0]
    first = ref.index(ref[3])
    assert out.token_ids == ref[:first + 1] and out.finish_reason == "stop" and out.stop_reason == ref[3]
    sampled = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=1.0, seed=3, n=3, min_tokens=8),
                           use_tqdm=False)[0]
    assert len(sampled.outputs) == 3 and all(len(c.token_ids) == 8 for c in sampled.outputs)
    again = llm.generate([prompt, prompt[:5]], SamplingParams(max_tokens=8, temperature=1.0, seed=3, n=3, min_tokens=8),
                         use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in sampled.outputs]


def test_timings_are_ordered(tiny, rng):
    llm = LLM(tiny, num_blocks=64, block_size=8)
    out = llm.generate(_prompts(rng, [9]), SamplingParams(max_tokens=5, **GREEDY), use_tqdm=False)[0]
    m = out.outputs[0].metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
    assert len(m.token_times) == 5 and m.token_times == sorted(m.token_times)


def test_clear_errors(tiny, rng):
    with pytest.raises(ValueError, match="scheduling_policy"):
        LLM(tiny, num_blocks=8, scheduling_policy="lottery")
    llm = LLM(tiny, num_blocks=4, block_size=8, max_model_len=100)
    with pytest.raises(ValueError, match="context"):
        llm.generate(_prompts(rng, [100]), SamplingParams(max_tokens=1), use_tqdm=False)
    with pytest.raises(ValueError, match="whole pool"):
        llm.generate(_prompts(rng, [40]), SamplingParams(max_tokens=1), use_tqdm=False)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            SamplingParams(top_p=bad)
    with pytest.raises(ValueError, match="priority"):
        llm.generate(_prompts(rng, [5]), SamplingParams(max_tokens=1), priority=[1], use_tqdm=False)
    with pytest.raises(ValueError, match="tokenizer"):
        LLM(tiny, num_blocks=8).generate("hello", use_tqdm=False)
