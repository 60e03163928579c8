"""Compiled decode (chapter 11): the whole-buffer static KV cache gives the same tokens and one graph."""
import pytest
import torch
from torch._dynamo.utils import counters

from common.advanced.compiled_decode import StaticKVCache, compile_step, greedy_decode, make_step, truncated
from common.model.generate import greedy_generate
from common.models import load_model


def test_static_cache_decode_equals_contiguous_cache(tiny, rng):
    prompt = torch.randint(0, tiny.config.vocab_size, (3, 7), generator=rng)
    cache = StaticKVCache(tiny.config, max_batch=4, max_seq_len=32)
    run = greedy_decode(tiny, make_step(tiny, cache), cache, prompt, steps=6)
    for row in range(3):
        expected = greedy_generate(tiny, prompt[row], 7)
        assert run.tokens[row].tolist() == expected[1:], f"row {row}"
    assert cache.seq_len == 7 + 6


def test_one_graph_for_every_step_and_batch_size(rng):
    """Dynamo with the eager backend (no codegen, fast): the same guards hold at every step and batch."""
    model = load_model("tiny", torch.float32)
    cache = StaticKVCache(model.config, max_batch=5, max_seq_len=24)
    step = make_step(model, cache)
    torch._dynamo.reset()
    counters.clear()
    run = compile_step(step, "inductor", backend="eager")
    for batch in (1, 5, 3):
        prompt = torch.randint(0, model.config.vocab_size, (batch, 4), generator=rng)
        eager = greedy_decode(model, step, cache, prompt, steps=5)
        traced = greedy_decode(model, run, cache, prompt, steps=5)
        assert torch.equal(eager.tokens, traced.tokens)
        torch.testing.assert_close(traced.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_bad_arguments_raise(tiny):
    with pytest.raises(ValueError):
        compile_step(lambda x: x, "max-autotune-typo")
    with pytest.raises(ValueError):
        StaticKVCache(tiny.config, max_batch=0, max_seq_len=8)
    cache = StaticKVCache(tiny.config, max_batch=1, max_seq_len=8)
    with pytest.raises(ValueError):
        greedy_decode(tiny, make_step(tiny, cache), cache, torch.zeros(2, 3, dtype=torch.long), steps=2)
    with pytest.raises(ValueError):
        truncated(load_model("tiny", torch.float32), 0)
