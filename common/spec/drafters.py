"""Drafters: cheap guessers of the next k tokens, all behind one interface.

A drafter sees the whole committed sequence (prompt + accepted output) at every step, so it needs
no separate rollback call: a drafter with state (the self-draft's KV cache) compares what it has
processed with the committed tokens and truncates to their common prefix itself.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import torch
from torch import nn

from ..model.kv_cache import KVCache
from ..model.llama import Llama


@dataclass
class Draft:
    """k proposed tokens and, for speculative sampling, the distribution q [k, vocab] each was drawn
    from (None for greedy drafting).

    定义于 第9章 §9.4
    """
    tokens: list[int]
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    """A drafter may also set `uses_target_hidden = True` and define `observe_target_hidden(h)`: the loop
    then hands it the target's final hidden state of the newest token's parent after every target forward
    (Medusa heads read it instead of running a model of their own).

    定义于 第9章 §9.4
    """

    name: str

    def propose(self, tokens: Sequence[int], k: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Draft:
        """Up to k tokens continuing `tokens` (fewer, even none, when the drafter has no guess)."""


def _check_k(k: int) -> None:
    if k < 0 or int(k) != k:
        raise ValueError(f"k must be a non-negative integer, got {k}")


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last n tokens (n from max_n down to
    min_n) and propose what followed it. Costs no model call; shines on repetitive text and code.

    定义于 第9章 §9.4
    """

    def __init__(self, max_n: int = 3, min_n: int = 1, vocab_size: int | None = None) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n, self.vocab_size = max_n, min_n, vocab_size
        self.name = f"ngram(n={min_n}..{max_n})"

    def lookup(self, tokens: Sequence[int], k: int) -> list[int]:
        _check_k(k)
        seq = list(tokens)
        if k == 0:
            return []
        for n in range(min(self.max_n, len(seq) - 1), self.min_n - 1, -1):
            tail, best = seq[-n:], []
            for start in range(len(seq) - n - 1, -1, -1):  # latest match first, excluding the tail itself
                if seq[start:start + n] == tail:
                    follow = seq[start + n:start + n + k]
                    if len(follow) == k:  # a recent match near the end may be cut short: keep looking
                        return follow
                    best = follow if len(follow) > len(best) else best
            if best:
                return best
        return []

    def propose(self, tokens: Sequence[int], k: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Draft:
        guess = self.lookup(tokens, k)
        if temperature <= 0 or not guess:
            return Draft(guess)
        if self.vocab_size is None:
            raise ValueError("speculative sampling with an n-gram drafter needs vocab_size (q is one-hot)")
        q = torch.zeros(len(guess), self.vocab_size)
        q[torch.arange(len(guess)), torch.tensor(guess)] = 1.0  # a deterministic guess: q = one-hot
        return Draft(guess, q)


def truncated_model(target: Llama, num_layers: int) -> Llama:
    """The first num_layers decoder layers of `target` with its final norm and LM head, sharing its
    weights (no copy): the 'self-draft' that needs no training and no extra memory.

    定义于 第9章 §9.4
    """
    total = target.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [1, {total}], got {num_layers}")
    with torch.device("meta"):
        draft = Llama(replace(target.config, num_hidden_layers=num_layers))
    draft.embed_tokens, draft.norm, draft.lm_head = target.embed_tokens, target.norm, target.lm_head
    draft.layers = nn.ModuleList(list(target.layers[:num_layers]))
    draft.rotary = target.rotary
    return draft.eval()


class ModelDrafter:
    """Drafts autoregressively with a small causal LM that keeps its own contiguous KV cache.

    定义于 第9章 §9.4
    """

    def __init__(self, model: Llama, name: str, max_seq_len: int | None = None) -> None:
        self.model, self.name = model, name
        self.max_seq_len = max_seq_len or model.config.max_position_embeddings
        self.cache = KVCache(model.config, 1, self.max_seq_len, model.dtype, model.device)
        self.seen: list[int] = []  # tokens whose K/V sit in self.cache, in order

    def _sync(self, tokens: list[int]) -> None:
        """Keep the common prefix of the cache and `tokens`, drop the rest (rollback = seq_len)."""
        common = 0
        limit = min(len(self.seen), len(tokens) - 1)  # always leave >= 1 token to feed
        while common < limit and self.seen[common] == tokens[common]:
            common += 1
        self.cache.seq_len, self.seen = common, self.seen[:common]

    @torch.inference_mode()
    def propose(self, tokens: Sequence[int], k: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Draft:
        _check_k(k)
        tokens = list(tokens)
        if not tokens:
            raise ValueError("the drafter needs at least one committed token")
        if k == 0:
            return Draft([], None)
        if len(tokens) + k > self.max_seq_len:
            raise ValueError(f"{len(tokens)} tokens + {k} draft tokens exceed the drafter's cache "
                             f"of {self.max_seq_len}")
        self._sync(tokens)
        feed = torch.tensor([tokens[len(self.seen):]], device=self.model.device)
        self.seen.extend(tokens[len(self.seen):])
        out, rows = [], []
        for _ in range(k):
            logits = self.model(feed, cache=self.cache, last_only=True)[0, -1].float()
            if temperature > 0:
                q = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(q, 1, generator=generator))
                rows.append(q)
            else:
                token = int(logits.argmax())
            out.append(token)
            self.seen.append(token)
            feed = torch.tensor([[token]], device=self.model.device)
        # the last draft token was never fed: drop it from `seen` so the cache and `seen` agree
        self.seen.pop()
        return Draft(out, torch.stack(rows) if rows else None)


class SelfDraftDrafter(ModelDrafter):
    """Self-speculation: the target's first m layers + final norm + LM head (shared weights).

    定义于 第9章 §9.4
    """

    def __init__(self, target: Llama, num_layers: int, max_seq_len: int | None = None) -> None:
        super().__init__(truncated_model(target, num_layers), f"self-draft(m={num_layers})", max_seq_len)


class QuantizedDrafter(ModelDrafter):
    """A weight-only RTN-quantized copy of the target (chapter 8's `common.quant`): same architecture,
    so it agrees with the target most of the time; it pays only where low-bit weights are read by a
    fused kernel (on this CPU `QuantLinear` dequantizes at every call, so it is not cheaper).

    定义于 第9章 §9.4
    """

    def __init__(self, target: Llama, bits: int = 8, granularity: str | int = "channel",
                 max_seq_len: int | None = None) -> None:
        from ..quant.recipes import rtn_model

        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        quantized = rtn_model(copy.deepcopy(target), bits, granularity)
        super().__init__(quantized.eval(), f"rtn-int{bits}({granularity})", max_seq_len)
