"""Chunked prefill: one chunk of attention against SDPA, the whole model against one prefill."""
import pytest
import torch

from common.model.attention import causal_mask, sdpa
from common.basics.chunked_prefill import attend_chunk, chunk_bounds, chunk_mask, chunked_prefill
from common.model.kv_cache import KVCache
from common.models import load_model
from common.hardware.peak_memory import peak_allocated


def test_chunk_mask_sees_cache_and_causal_chunk():
    mask = chunk_mask(4, 3)
    assert mask.shape == (3, 7)
    assert mask[:, :4].all() and torch.equal(mask[:, 4:], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError):
        chunk_mask(2, 0)


def test_attend_chunk_equals_rows_of_full_attention():
    q, k, v = torch.randn(2, 6, 10, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    full = sdpa(q, k, v, mask=causal_mask(10))
    out, keys, _ = attend_chunk(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], k[:, :, :6], v[:, :, :6])
    torch.testing.assert_close(out, full[:, :, 6:], atol=1e-5, rtol=1e-5)
    assert torch.equal(keys, k)
    with pytest.raises(ValueError):
        attend_chunk(q[:, :, 6:], k[:, :, 5:], v[:, :, 5:], k[:, :, :6], v[:, :, :6])


def test_chunk_bounds():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.mark.parametrize("chunk", [1, 5, 16, 40])
def test_chunked_prefill_logits_equal_full_prefill(model, chunk):
    ids = torch.randint(0, model.config.vocab_size, (1, 37))
    with torch.inference_mode():
        full = model(ids)
    cache = KVCache(model.config, 1, 37)
    chunked = chunked_prefill(model, ids, chunk, cache, last_only=False)
    torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-4)
    assert cache.seq_len == 37


def test_peak_allocated_counts_a_temporary():
    def work():
        a = torch.ones(1 << 20)            # 4 MiB
        b = a * 2                          # another 4 MiB while a is alive
        return float(b.sum())

    peak, result = peak_allocated(work, "cpu")
    assert result == 2.0 * (1 << 20)
    assert 8 << 20 <= peak < 16 << 20


def test_peak_allocated_keeps_the_profiler_quiet_but_not_the_function(capfd):
    """Kineto's `USDT ... profiler_start/stop` lines must not reach stderr; what fn() writes still must."""
    import os

    def work():
        os.write(2, b"from fn\n")
        return torch.ones(1 << 10).sum()

    peak_allocated(work, "cpu")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err, err
    assert "from fn" in err
