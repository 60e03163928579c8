"""Padding counts, the packed (ragged) cache and the token-budget schedule, on the tiny model."""
import pytest
import torch

from common.basics.batching import RaggedKVCache, join_padding, static_batch_padding
from common.model.generate import greedy_generate
from common.basics.token_budget import Request, serve_packed
from common.sim.token_budget import simulate


def test_join_padding_is_n_minus_1_times_b_minus_1():
    count = join_padding(100, 8)
    assert (count.useful, count.padded, count.total) == (107, 693, 800)
    assert join_padding(1, 5).padded == 0


def test_static_padding_counts_prompt_and_output_slots():
    count = static_batch_padding([2, 5, 10], [1, 1, 1], batch_size=3)
    assert (count.useful, count.padded) == (20, 13)       # book exercise 5.2 plus one output token each
    assert static_batch_padding([4, 4], [3, 3], batch_size=1).padded == 0
    with pytest.raises(ValueError):
        static_batch_padding([3, 0], [1, 1], 2)


def test_ragged_forward_equals_each_sequence_alone(tiny):
    lengths = [5, 11, 3]
    seqs = [torch.randint(0, tiny.config.vocab_size, (1, n)) for n in lengths]
    cache = RaggedKVCache(tiny.config.num_hidden_layers)
    positions = cache.plan(list(enumerate(lengths)))
    with torch.inference_mode():
        packed = tiny(torch.cat(seqs, dim=1), positions=positions, cache=cache)
        alone = torch.cat([tiny(s) for s in seqs], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    assert cache.lengths == {0: 5, 1: 11, 2: 3}


def test_ragged_cache_needs_a_plan(tiny):
    cache = RaggedKVCache(tiny.config.num_hidden_layers)
    with pytest.raises(ValueError):
        tiny(torch.tensor([[1, 2]]), cache=cache)
    with pytest.raises(ValueError):
        cache.plan([(0, 2), (0, 1)])


def test_schedule_puts_decodes_first_and_respects_budget():
    requests = [Request(0, 6, 3), Request(1, 9, 2), Request(2, 4, 2, arrival=2)]
    steps = simulate(requests, budget=5)
    assert all(s.num_tokens <= 5 for s in steps)
    assert steps[0].prefills == [(0, 5)] and steps[1].prefills == [(0, 1), (1, 4)]
    assert steps[2].decodes == [0]
    assert all(r.generated == r.output_len for r in requests)
    assert sum(n for s in steps for _, n in s.prefills) == 19


def test_serve_packed_matches_greedy_alone(tiny):
    prompts = [torch.randint(0, tiny.config.vocab_size, (n,)).tolist() for n in (4, 13, 7)]
    outputs, steps = serve_packed(tiny, prompts, [3, 4, 2], budget=6, arrivals=[0, 1, 1])
    assert outputs == [greedy_generate(tiny, p, n) for p, n in zip(prompts, [3, 4, 2])]
    assert max(s.num_tokens for s in steps) <= 6
