"""KV-bytes formulas: known configs, the book's Llama-2-7B number, bad input, and the real cache."""
import pytest
import torch

from common.kv_cache import KVCache
from common.kv_math import (KNOWN_CONFIGS, AttentionConfig, kv_bytes_per_token, kv_cache_bytes,
                            mla_bytes_per_token)
from common.models import load_config


def test_llama2_7b_is_half_a_mib_per_token_in_fp16():
    assert KNOWN_CONFIGS["Llama-2-7B"].bytes_per_token(2) == 512 * 1024


def test_gqa_counts_kv_heads_not_query_heads():
    llama3 = KNOWN_CONFIGS["Llama-3-8B"]
    assert llama3.kind == "GQA"
    assert llama3.mha_bytes_per_token() == 4 * llama3.bytes_per_token()


def test_mla_is_latent_plus_rope_per_layer():
    v3 = KNOWN_CONFIGS["DeepSeek-V3"]
    assert v3.kind == "MLA"
    assert v3.bytes_per_token(2) == mla_bytes_per_token(61, 512, 64, 2) == 61 * 576 * 2


def test_kinds():
    assert KNOWN_CONFIGS["Falcon-7B"].kind == "MQA"
    assert KNOWN_CONFIGS["Llama-2-13B"].kind == "MHA"


@pytest.mark.parametrize("args", [(0, 1, 64), (2, -1, 64), (2, 1, 6.5)])
def test_bad_input_raises(args):
    with pytest.raises(ValueError):
        kv_bytes_per_token(*args)


def test_heads_must_divide():
    with pytest.raises(ValueError):
        AttentionConfig("bad", 2, 9, 2, 64)


def test_formula_equals_allocated_cache_bytes():
    config = load_config("tiny")
    cache = KVCache(config, batch_size=3, max_seq_len=17, dtype=torch.bfloat16)
    per_token = kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, 2)
    assert cache.nbytes == kv_cache_bytes(per_token, 17, 3)
    assert per_token == config.kv_bytes_per_token
