"""Overlap scheduling (LLM(async_scheduling=True)): the same greedy tokens as the serial engine and as
plain greedy decoding, through chunked prefill, preemption, prefix caching, early stops and n > 1."""
import pytest
import torch

from common.engine import LLM, SamplingParams
from common.model.generate import greedy_generate

GREEDY = dict(temperature=0.0, ignore_eos=True)


def _prompts(rng, lengths):
    return [torch.randint(0, 49152, (n,), generator=rng).tolist() for n in lengths]


def _tokens(outs):
    return [[c.token_ids for c in o.outputs] for o in outs]


@pytest.mark.parametrize("engine_kw,lengths,max_tokens", [
    (dict(num_blocks=64, block_size=8, max_num_batched_tokens=32, enable_prefix_caching=False),
     [3, 37, 70, 16, 1, 49], [12] * 6),                       # ragged batches, chunked prefill
    (dict(num_blocks=12, block_size=8, max_num_batched_tokens=64), [20, 25, 30, 18, 22], [40] * 5),  # preemption
    (dict(num_blocks=64, block_size=8), [5, 9, 13, 40, 2, 7, 8], [1, 2, 3, 17, 5, 30, 9]),         # early finishes
])
def test_overlap_equals_serial_and_greedy(tiny, rng, engine_kw, lengths, max_tokens):
    prompts = _prompts(rng, lengths)
    params = [SamplingParams(max_tokens=m, **GREEDY) for m in max_tokens]
    serial = LLM(tiny, **engine_kw).generate(prompts, params, use_tqdm=False)
    llm = LLM(tiny, async_scheduling=True, **engine_kw)
    overlapped = llm.generate(prompts, params, use_tqdm=False)
    assert _tokens(overlapped) == _tokens(serial)
    assert [t[0] for t in _tokens(overlapped)] == [greedy_generate(tiny, p, m) for p, m in zip(prompts, max_tokens)]
    assert all(-1 not in c.token_ids for o in overlapped for c in o.outputs)     # no placeholder leaks
    assert llm.block_manager.num_free_blocks == llm.num_blocks
    if engine_kw["num_blocks"] == 12:
        assert sum(s.num_preempted for s in llm.stats) > 0


def test_overlap_with_prefix_cache_stops_and_n(tiny, rng):
    shared = _prompts(rng, [40])[0]
    prompts = [shared + tail for tail in _prompts(rng, [5, 9, 3])]
    serial_llm = LLM(tiny, num_blocks=64, block_size=8)
    ref = serial_llm.generate(prompts, SamplingParams(max_tokens=10, **GREEDY), use_tqdm=False)
    stop = ref[1].outputs[0].token_ids[4]          # a token the second request produces: it must stop there
    params = SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[stop], n=2)
    serial = LLM(tiny, num_blocks=64, block_size=8).generate(prompts, params, use_tqdm=False)
    llm = LLM(tiny, num_blocks=64, block_size=8, async_scheduling=True)
    overlapped = llm.generate(prompts, params, use_tqdm=False)
    assert _tokens(overlapped) == _tokens(serial)
    assert overlapped[1].outputs[0].finish_reason == "stop" and len(overlapped[1].outputs[0].token_ids) <= 5
    assert [o.num_cached_tokens for o in overlapped] == [o.num_cached_tokens for o in serial]
    assert llm.block_manager.num_free_blocks == llm.num_blocks


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_prompt_that_finishes_in_its_prefill_step_is_still_cached(tiny, rng, async_scheduling):
    """max_tokens=1 finishes in the prefill step; its full blocks must still enter the prefix cache (vLLM does)."""
    prompt = _prompts(rng, [33])[0]
    llm = LLM(tiny, num_blocks=64, block_size=8, async_scheduling=async_scheduling)
    llm.generate([prompt], SamplingParams(max_tokens=1, **GREEDY), use_tqdm=False)
    again = llm.generate([prompt + [7]], SamplingParams(max_tokens=1, **GREEDY), use_tqdm=False)
    assert again[0].num_cached_tokens == 32
