"""The KV-bytes formulas: the book's Llama-2-7B number, bad input, and the real caches."""
import pytest
import torch

from common.model.kv_cache import KVCache
from common.model.kv_math import kv_bytes_per_token, mla_bytes_per_token
from common.models import load_config
from common.paged import PagedKVStore
from common.quant.kv_int8 import Int8KVCache


def test_llama2_7b_is_half_a_mib_per_token_in_fp16():
    assert kv_bytes_per_token(32, 32, 128, 2) == 512 * 1024
    assert kv_bytes_per_token(1, 32, 128, 2) == 16 * 1024       # the book's "16 KB/token" is one layer


def test_mla_is_latent_plus_rope_per_layer():
    assert mla_bytes_per_token(61, 512, 64, 2) == 61 * 576 * 2


@pytest.mark.parametrize("args", [(0, 1, 64), (2, -1, 64), (2, 1, 6.5), (2, 1, 64, 0), (2, 1, 64, True),
                                  (2, 1, 64, "2")])
def test_bad_input_raises(args):
    with pytest.raises(ValueError):
        kv_bytes_per_token(*args)


def test_formula_equals_allocated_cache_bytes():
    config = load_config("tiny")
    layers, heads, dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    for dtype in (torch.bfloat16, torch.float32):
        cache = KVCache(config, batch_size=3, max_seq_len=17, dtype=dtype)
        assert cache.nbytes == 3 * 17 * kv_bytes_per_token(layers, heads, dim, dtype.itemsize)
        store = PagedKVStore(config, num_blocks=5, block_size=4, dtype=dtype)
        assert store.nbytes == 5 * 4 * kv_bytes_per_token(layers, heads, dim, dtype.itemsize)
    int8 = Int8KVCache(config, batch_size=2, max_seq_len=9)
    assert int8.nbytes == 2 * 9 * Int8KVCache.bytes_per_token(config)
    assert Int8KVCache.bytes_per_token(config) == kv_bytes_per_token(layers, heads, dim + 2, 1)   # + fp16 scales
