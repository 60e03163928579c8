"""Memory calculator: book errata as reference values, and the formulas checked against the
real tensors of our model and KV cache."""
import math

import pytest
import torch

from common.model.kv_cache import KVCache
from common.model.kv_math import kv_bytes_per_token
from common.hardware.memory_calc import (decode_floor, kv_cache_bytes, max_concurrent_requests, memory_budget,
                                         weights_bytes)
from common.model.model_shapes import ModelShape, get_shape
from common.models import hf_model_dir, load_config


def test_errata_reference_values():
    assert get_shape("llama-2-7b").bytes_per_token() == 524_288            # not the book's 16 KB
    assert weights_bytes(get_shape("llama-3-70b")) / 1e9 == pytest.approx(141.2)  # not 80 GB
    assert get_shape("llama-3-8b").bytes_per_token() == 131_072            # GQA: 8 KV heads
    assert get_shape("deepseek-v3").bytes_per_token() == 61 * (512 + 64) * 2


def test_attention_variants_scale_with_kv_heads():
    m = get_shape("llama-3-70b")
    mha, gqa, mqa = (m.with_attention(a).bytes_per_token() for a in ("mha", "gqa", "mqa"))
    assert mha / gqa == m.heads / m.kv_heads == 8
    assert gqa / mqa == m.kv_heads


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m"])
def test_formulas_match_real_tensors(name):
    config = load_config(name)
    shape = ModelShape.from_config(name, config)
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):          # transformers' own module for this checkpoint, no weights allocated
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_model_dir(name)))
    assert shape.params == sum(p.numel() for p in hf.parameters())   # tied embedding counted once
    batch, tokens = 3, 17
    cache = KVCache(config, batch, tokens, torch.bfloat16)
    assert kv_cache_bytes(shape, tokens, batch, 2) == cache.nbytes
    assert shape.bytes_per_token(2) == kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                                                       config.head_dim, 2)


def test_smollm2_parameter_count():
    shape = ModelShape.from_config("smollm2-135m", load_config("smollm2-135m"))
    assert shape.params == 134_515_008  # 134.5M, tied embedding counted once


def test_decode_floor_counts_every_layer():
    m = get_shape("llama-2-7b")
    step = decode_floor(m, 3.35e12, batch=1, context=1000)
    assert step.kv_bytes == 1000 * 32 * 2 * 4096 * 2    # 32 layers, not the book's one-layer 16 MB
    assert step.seconds == pytest.approx((m.params * 2 + step.kv_bytes) / 3.35e12)


def test_max_concurrent_matches_brute_force():
    m = get_shape("llama-3-8b")
    gpu, context = 80e9, 4096
    n = max_concurrent_requests(m, gpu, context=context, utilization=0.9, runtime_bytes=2**30)
    budget = lambda k: memory_budget(m, k, context, runtime_bytes=2**30, fragmentation=0).total  # noqa: E731
    k = 0
    while budget(k + 1) <= 0.9 * gpu:  # add requests one at a time until the next one does not fit
        k += 1
    assert n == k > 0
    assert max_concurrent_requests(get_shape("llama-3-70b"), gpu, context) == 0  # 141 GB of weights
    assert max_concurrent_requests(get_shape("llama-3-70b"), gpu, context, num_gpus=2) == 0  # 144 GB usable
    assert max_concurrent_requests(get_shape("llama-3-70b"), gpu, context, num_gpus=4) > 0


@pytest.mark.parametrize("bad", [dict(context=0), dict(utilization=1.5), dict(utilization=0)])
def test_bad_inputs_raise(bad):
    args = dict(model=get_shape("llama-3-8b"), memory_bytes=80e9, context=4096) | bad
    with pytest.raises(ValueError):
        max_concurrent_requests(**args)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        get_shape("llama-3-8b").with_attention("sparse")
    with pytest.raises(ValueError):
        get_shape("llama-3-8b").with_attention("mla")       # no latent to cache
    with pytest.raises(ValueError):
        ModelShape("x", 1e9, 2, 64, 4, 4, 16, 128, 100, kv_lora_rank=512)   # MLA without its RoPE key
    with pytest.raises(ValueError):
        ModelShape("x", 1e9, 2, 64, 9, 2, 16, 128, 100)     # 9 query heads cannot share 2 KV heads
    with pytest.raises(ValueError):
        weights_bytes(get_shape("llama-3-8b"), 0)
    with pytest.raises(ValueError):
        decode_floor(get_shape("llama-3-8b"), 0)
    assert math.isfinite(decode_floor(get_shape("llama-3-8b"), 1e12).seconds)
