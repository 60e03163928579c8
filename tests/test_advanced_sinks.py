"""Attention sinks + sliding window (common.advanced.sinks) against transformers' MistralForCausalLM with
sliding_window, and the token-by-token StreamingLLM loop against the mask and against a literal version that
re-encodes every cached key at its position inside the cache (what the paper describes)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from common.advanced.sinks import (MaskedAttention, hf_sliding_window_model, masked_nll, sink_attention_mass,
                                   sink_window_mask, streaming_nll)
from common.model.layers import apply_rope


def test_mask_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sink_window_mask(5, 4)
    with pytest.raises(ValueError):
        sink_window_mask(4, window=0)


def test_window_mask_equals_transformers_mistral_sliding_window(tiny):
    window = random.randint(2, 12)
    ids = torch.randint(0, tiny.config.vocab_size, (1, random.randint(window + 5, 48)))
    peer = hf_sliding_window_model("tiny", window)
    with torch.no_grad():
        ours = tiny(ids, cache=MaskedAttention(sink_window_mask(ids.shape[1], window=window)))
        theirs = peer(ids).logits
        dense = tiny(ids)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (dense - theirs).abs().max() > 1e-3          # the window really changes the result


def test_streaming_loop_without_shift_equals_sink_window_mask(tiny):
    window, sinks = random.randint(2, 10), random.randint(0, 4)
    ids = torch.randint(0, tiny.config.vocab_size, (1, random.randint(window + sinks + 5, 40)))
    loop, max_cached = streaming_nll(tiny, ids, window, sinks, shift_positions=False)
    torch.testing.assert_close(loop, masked_nll(tiny, ids, window, sinks), atol=1e-4, rtol=1e-4)
    assert max_cached == window + sinks


class LiteralStreamingCache:
    """StreamingLLM as written: keep un-rotated keys, rotate every cached key by its slot in the cache and the
    query by the last slot, at every step."""

    def __init__(self, model, window: int, sinks: int) -> None:
        self.model, self.window, self.sinks = model, window, sinks
        self.k = [[] for _ in model.layers]
        self.v = [[] for _ in model.layers]
        self.seq_len = 0

    def _rot(self, x, pos, sign=1.0):
        cos, sin = self.model.rotary(torch.tensor([pos]), x.dtype)
        return apply_rope(x, cos, sign * sin)

    def attend(self, layer, q, k, v):
        p = self.seq_len
        self.k[layer].append(self._rot(k, p, -1.0))      # undo the model's rotation at the original position
        self.v[layer].append(v)
        if len(self.k[layer]) > self.sinks + self.window:  # evict the oldest non-sink token
            del self.k[layer][self.sinks], self.v[layer][self.sinks]
        keys = torch.cat([self._rot(kk, slot) for slot, kk in enumerate(self.k[layer])], dim=2)
        query = self._rot(self._rot(q, p, -1.0), len(self.k[layer]) - 1)
        return F.scaled_dot_product_attention(query, keys, torch.cat(self.v[layer], dim=2),
                                              enable_gqa=q.shape[1] != keys.shape[1])

    def advance(self, n):
        self.seq_len += n


def test_streaming_loop_with_shift_equals_literal_cache_positions(tiny):
    window, sinks = random.randint(2, 8), random.randint(1, 4)
    ids = torch.randint(0, tiny.config.vocab_size, (1, random.randint(window + sinks + 8, 40)))
    loop, _ = streaming_nll(tiny, ids, window, sinks, shift_positions=True)
    cache, literal = LiteralStreamingCache(tiny, window, sinks), []
    with torch.no_grad():
        for t in range(ids.shape[1] - 1):
            logits = tiny(ids[:, t:t + 1], positions=torch.tensor([t]), cache=cache)
            literal.append(F.cross_entropy(logits[0], ids[0, t + 1:t + 2]))
    torch.testing.assert_close(loop, torch.stack(literal), atol=1e-4, rtol=1e-4)
    assert (loop - masked_nll(tiny, ids, window, sinks)).abs().max() > 1e-4   # the shift does change the sinks


def test_sink_mass_equals_transformers_attention_weights(tiny):
    from common.models import load_hf_model

    ids = torch.randint(0, tiny.config.vocab_size, (1, 24))
    hf = load_hf_model("tiny")
    hf.set_attn_implementation("eager")
    with torch.no_grad():
        attn = hf(ids, output_attentions=True).attentions
    expected = [a[0, :, 4:, 0].mean().item() for a in attn]
    assert sink_attention_mass(tiny, ids, min_query=4) == pytest.approx(expected, abs=1e-5)
