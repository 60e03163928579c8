"""Attention sinks and sliding windows (StreamingLLM, Xiao et al. 2023) on the from-scratch Llama (§11.6).

Two ways to run the same idea:
- masks over one full forward (`sink_window_mask` + `MaskedAttention`): every token keeps its original
  position; the mask decides which keys a query may see (dense, sliding window, sinks + window);
- the token-by-token loop that StreamingLLM runs (`StreamingCache` + `streaming_nll`): the cache holds at
  most `num_sinks + window` keys, evicts the oldest non-sink key, and (with `shift_positions=True`) gives
  positions *inside the cache*, as the paper does. RoPE depends only on the query–key distance, so for the
  contiguous window this equals the original positions; only the sinks move, and the cache re-rotates them
  to their in-cache distance at every step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.model.layers import apply_rope
from common.model.llama import Llama


def sink_window_mask(num_queries: int, num_keys: int | None = None, window: int | None = None,
                     num_sinks: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool [num_queries, num_keys], True = may attend. Queries are the last num_queries keys.

    Query i (absolute position p) sees key j when j <= p and (p - j < window or j < num_sinks);
    window=None is dense causal. `window` counts the query itself, as transformers' sliding_window does.

    定义于 第11章 §11.6
    """
    num_keys = num_queries if num_keys is None else num_keys
    if num_queries > num_keys:
        raise ValueError(f"more queries ({num_queries}) than keys ({num_keys})")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if num_sinks < 0:
        raise ValueError(f"num_sinks must be >= 0, got {num_sinks}")
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]
    k_pos = torch.arange(num_keys, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= (q_pos - k_pos < window) | (k_pos < num_sinks)
    return allowed


class MaskedAttention:
    """A stateless `AttentionCache` for one full forward: attention under a fixed mask.

    With record_sink_mass=True it also keeps, per layer, the mean attention weight that queries at
    positions >= min_query put on key 0 (averaged over heads and those queries).

    定义于 第11章 §11.6
    """

    def __init__(self, mask: torch.Tensor, record_sink_mass: bool = False, min_query: int = 1) -> None:
        self.mask = mask
        self.seq_len = 0
        self.record_sink_mass = record_sink_mass
        self.min_query = min_query
        self.sink_mass: dict[int, float] = {}

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        if self.record_sink_mass:
            kk = k.repeat_interleave(groups, dim=1)
            scores = (q @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            probs = torch.softmax(scores.float().masked_fill(~self.mask, float("-inf")), dim=-1)
            self.sink_mass[layer_idx] = probs[..., self.min_query:, 0].mean().item()
            return (probs.to(v.dtype) @ v.repeat_interleave(groups, dim=1))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=groups > 1)

    def advance(self, num_tokens: int) -> None:
        pass


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood [seq-1] of ids[1:] under logits[:-1] (batch 1).

    定义于 第11章 §11.6
    """
    return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")


@torch.no_grad()
def masked_nll(model: Llama, ids: torch.Tensor, window: int | None = None, num_sinks: int = 0) -> torch.Tensor:
    """Per-token NLL of one sequence [1, S] under a dense / window / sinks+window mask.

    定义于 第11章 §11.6
    """
    mask = sink_window_mask(ids.shape[1], window=window, num_sinks=num_sinks, device=ids.device)
    return token_nll(model(ids, cache=MaskedAttention(mask)), ids)


@torch.no_grad()
def sink_attention_mass(model: Llama, ids: torch.Tensor, min_query: int = 16) -> list[float]:
    """Mean attention weight on token 0, per layer, for queries at positions >= min_query (dense causal).

    定义于 第11章 §11.6
    """
    cache = MaskedAttention(sink_window_mask(ids.shape[1], device=ids.device), True, min_query)
    model(ids, cache=cache)
    return [cache.sink_mass[i] for i in range(len(model.layers))]


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL): the one number that shows whether a KV window kept the model intact.

    定义于 第11章 §11.6
    """
    return math.exp(nll.float().mean().item())


class StreamingCache:
    """StreamingLLM's rolling KV cache: `num_sinks` first tokens + the last `window` - 1 tokens + the new one.

    Feed one token per forward, with positions = the token's original position. Window keys stay rotated at
    their original positions (their distance to the query is the same inside the cache). With
    shift_positions=True, sink keys are re-rotated every step so that their distance to the query is their
    distance *inside the cache* (what the paper does); with False they keep their original positions, which
    equals the sinks + window mask exactly.

    定义于 第11章 §11.6
    """

    def __init__(self, model: Llama, window: int, num_sinks: int, shift_positions: bool = True) -> None:
        if window < 1 or num_sinks < 0:
            raise ValueError(f"need window >= 1 and num_sinks >= 0, got {window}, {num_sinks}")
        self.model = model
        self.window, self.num_sinks, self.shift_positions = window, num_sinks, shift_positions
        n = len(model.layers)
        self.sink_k: list[torch.Tensor | None] = [None] * n   # rotated at their original positions 0..s-1
        self.sink_v: list[torch.Tensor | None] = [None] * n
        self.win_k: list[torch.Tensor | None] = [None] * n
        self.win_v: list[torch.Tensor | None] = [None] * n
        self.seq_len = 0          # tokens seen so far (= original position of the next token)
        self.max_cached = 0       # the most keys any query attended to (bounded by num_sinks + window)

    def _sink_keys(self, layer_idx: int, k_sink: torch.Tensor) -> torch.Tensor:
        """Sink keys rotated so that their distance to the current query is their in-cache distance."""
        win_len = 0 if self.win_k[layer_idx] is None else self.win_k[layer_idx].shape[2]
        # query slot in the cache: num_sinks + win_len - 1; sink i sits at slot i. Its original distance is
        # seq_len - i, so it must move forward by delta = seq_len - (num_sinks + win_len - 1) (0 before eviction)
        delta = self.seq_len - (self.num_sinks + win_len - 1)
        if not self.shift_positions or delta <= 0:
            return k_sink
        cos, sin = self.model.rotary(torch.tensor([delta], device=k_sink.device), k_sink.dtype)
        return apply_rope(k_sink, cos, sin)   # R(i) then R(delta) = R(i + delta)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[2] != 1:
            raise ValueError("StreamingCache takes one token per forward (the token-by-token loop)")
        if self.seq_len < self.num_sinks:
            prev_k, prev_v = self.sink_k[layer_idx], self.sink_v[layer_idx]
            self.sink_k[layer_idx] = k if prev_k is None else torch.cat([prev_k, k], dim=2)
            self.sink_v[layer_idx] = v if prev_v is None else torch.cat([prev_v, v], dim=2)
        else:
            wk, wv = self.win_k[layer_idx], self.win_v[layer_idx]
            wk = k if wk is None else torch.cat([wk, k], dim=2)
            wv = v if wv is None else torch.cat([wv, v], dim=2)
            self.win_k[layer_idx], self.win_v[layer_idx] = wk[:, :, -self.window:], wv[:, :, -self.window:]
        keys, values = [], []
        if self.sink_k[layer_idx] is not None:
            keys.append(self._sink_keys(layer_idx, self.sink_k[layer_idx]))
            values.append(self.sink_v[layer_idx])
        if self.win_k[layer_idx] is not None:
            keys.append(self.win_k[layer_idx])
            values.append(self.win_v[layer_idx])
        keys_t, values_t = torch.cat(keys, dim=2), torch.cat(values, dim=2)
        self.max_cached = max(self.max_cached, keys_t.shape[2])
        return F.scaled_dot_product_attention(q, keys_t, values_t, enable_gqa=q.shape[1] != keys_t.shape[1])

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens


@torch.no_grad()
def streaming_nll(model: Llama, ids: torch.Tensor, window: int, num_sinks: int,
                  shift_positions: bool = True, progress=None) -> tuple[torch.Tensor, int]:
    """Per-token NLL [S-1] of the token-by-token StreamingLLM loop, and the largest cache it used.

    `window` counts the current token, as in `sink_window_mask`. progress: optional callable(n) per step.

    定义于 第11章 §11.6
    """
    cache = StreamingCache(model, window, num_sinks, shift_positions)
    nll = []
    for t in range(ids.shape[1] - 1):
        logits = model(ids[:, t:t + 1], positions=torch.tensor([t], device=ids.device), cache=cache)
        nll.append(F.cross_entropy(logits[0, -1:].float(), ids[0, t + 1:t + 2]))
        if progress is not None:
            progress(1)
    return torch.stack(nll), cache.max_cached


def hf_sliding_window_model(name: str, window: int, dtype: torch.dtype = torch.float32):
    """The real peer: a Llama checkpoint's weights in transformers' MistralForCausalLM with sliding_window.

    Mistral is Llama's architecture plus a sliding-window mask, so the state dict loads unchanged; its
    `sliding_window` keeps the query and the window - 1 keys before it, as `sink_window_mask` does.

    定义于 第11章 §11.6
    """
    from safetensors.torch import load_file
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import MistralConfig, MistralForCausalLM

    from common.models import hf_model_dir

    folder = hf_model_dir(name)
    raw = HFLlamaConfig.from_pretrained(folder).to_dict()
    for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
        raw.pop(key, None)
    config = MistralConfig(**raw, sliding_window=window)
    config._attn_implementation = "eager"
    model = MistralForCausalLM(config)
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]   # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto Mistral: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.to(dtype).eval()
