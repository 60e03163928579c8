import pytest

from common.hardware.cost import (agent_task_cost, agent_task_tokens, decode_tokens_per_s, prompt_cost_usd,
                         usd_per_million_tokens)
from common.hardware.gpu_specs import get_spec
from common.model.model_shapes import get_shape


def test_usd_per_million_tokens():
    # $3.6/h at 1000 tok/s = 3.6M tokens per hour -> $1 per million
    assert usd_per_million_tokens(1000, 3.6) == pytest.approx(1.0)
    assert usd_per_million_tokens(500, 3.6) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        usd_per_million_tokens(0, 1.0)


def test_agent_tokens_book_example():
    # the book's 50 steps x 500 tokens: 25,000 new tokens, but 637,500 prompt tokens are sent
    t = agent_task_tokens(50, 500)
    assert t.new_tokens == 25_000
    assert t.prompt_tokens == 500 * 50 * 51 // 2 == 637_500
    assert t.cached_fraction == pytest.approx(612_500 / 637_500)


def test_agent_tokens_with_system_prompt():
    t = agent_task_tokens(3, 10, system=100)
    assert t.prompt_tokens == (110 + 120 + 130)
    assert t.new_tokens == 130
    assert t.cached_tokens == 230


def test_agent_cost_book_prices():
    c = agent_task_cost(50, 500, 3.0, 0.30)
    assert c.no_cache_usd == pytest.approx(637_500 * 3e-6)
    assert c.cached_usd == pytest.approx(25_000 * 3e-6 + 612_500 * 0.3e-6)
    assert c.saving == pytest.approx(1 - 0.25875 / 1.9125)


def test_saving_grows_with_task_length():
    # the opposite of the book's table (75% -> 60% as tasks get longer)
    savings = [agent_task_cost(n, 500, 3.0, 0.30).saving for n in (10, 30, 50, 100)]
    assert savings == sorted(savings)
    assert savings[-1] < 0.9                 # bounded by the 10x price ratio


def test_measured_fraction_overrides_ideal():
    c = agent_task_cost(10, 100, 3.0, 0.3, cached_fraction=0.0)
    assert c.saving == pytest.approx(0.0)
    with pytest.raises(ValueError):
        agent_task_cost(10, 100, 3.0, 0.3, cached_fraction=1.5)


def test_prompt_cost():
    assert prompt_cost_usd(1e6, 1e6, 3.0, 0.3) == pytest.approx(3.3)


def test_decode_tokens_per_s_memory_then_compute_bound():
    m, h100 = get_shape("llama-3-8b"), get_spec("H100")
    one = decode_tokens_per_s(m, h100, batch=1, context=0)
    # batch 1 reads all weights once: ~3.35e12 / 16e9 ~ 200 tok/s
    assert one == pytest.approx(h100.bandwidth / (2 * m.params), rel=0.02)
    big = decode_tokens_per_s(m, h100, batch=4096, context=0)
    assert big == pytest.approx(h100.peak_flops() / (2 * m.params), rel=0.02)   # compute roof
    assert decode_tokens_per_s(m, h100, 64, 0, efficiency=0.5) == pytest.approx(
        decode_tokens_per_s(m, h100, 64, 0) / 2)
