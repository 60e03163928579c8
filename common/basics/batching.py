"""Static vs ragged batching (book 5.8–5.9): padding counted, and a cache for packed sequences.

Static batching pads every request of a batch to the longest prompt and keeps finished requests
in the batch until the longest output is done. Ragged batching drops the batch dimension: the
tokens of several requests are concatenated into one [1, T] row, positions restart per request,
and the attention mask (block-diagonal, causal inside each block) keeps requests apart.
`RaggedKVCache` is that mask plus one K/V store per request, so one forward can mix prefill
chunks and decode steps of different requests (what chapter 7's engine does with pages).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

from ..model.attention import sdpa


def _check_lengths(name: str, lengths: Sequence[int], minimum: int = 1) -> None:
    if len(lengths) == 0 or any((not isinstance(n, int)) or n < minimum for n in lengths):
        raise ValueError(f"{name} must be a non-empty list of integers >= {minimum}, got {list(lengths)!r}")


@dataclass(frozen=True)
class PaddingCount:
    """Useful vs padded token slots of a batch: the waste static batching pays.

    定义于 第5章 §5.9
    """
    useful: int
    padded: int

    @property
    def total(self) -> int:
        return self.useful + self.padded

    @property
    def waste(self) -> float:
        return self.padded / self.total


def join_padding(prompt_len: int, batch_size: int) -> PaddingCount:
    """One prompt of n tokens prefilled in a static batch with B−1 requests that decode one token
    each: every decoder is padded to n, so (n−1)(B−1) slots are padding.

    定义于 第5章 §5.9
    """
    if prompt_len < 1 or batch_size < 1:
        raise ValueError(f"need prompt_len >= 1 and batch_size >= 1, got {prompt_len}, {batch_size}")
    return PaddingCount(useful=prompt_len + batch_size - 1, padded=(prompt_len - 1) * (batch_size - 1))


def static_batch_padding(prompt_lens: Sequence[int], output_lens: Sequence[int], batch_size: int) -> PaddingCount:
    """Requests taken in order, `batch_size` at a time. A batch's prefill pads to its longest prompt;
    its decode runs max(output) steps for every member (finished ones are padding).

    定义于 第5章 §5.9
    """
    _check_lengths("prompt_lens", prompt_lens)
    _check_lengths("output_lens", output_lens)
    if len(prompt_lens) != len(output_lens) or batch_size < 1:
        raise ValueError("prompt_lens and output_lens must have equal length and batch_size must be >= 1")
    useful = sum(prompt_lens) + sum(output_lens)
    slots = 0
    for s in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[s:s + batch_size], output_lens[s:s + batch_size]
        slots += len(p) * (max(p) + max(o))
    return PaddingCount(useful=useful, padded=slots - useful)


class RaggedKVCache:
    """K/V per request; each forward packs several requests' new tokens into one [1, T] row.

    Call `plan([(request_id, num_new_tokens), ...])` before each forward: it returns the per-token
    positions to pass to the model and builds the mask. Query token i of request r (at position
    cached_r + i) may attend to keys of request r at positions <= cached_r + i, nothing else.

    定义于 第5章 §5.9
    """

    def __init__(self, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.k: dict[Hashable, list[torch.Tensor | None]] = {}
        self.v: dict[Hashable, list[torch.Tensor | None]] = {}
        self.lengths: dict[Hashable, int] = {}
        self._batch: list[tuple[Hashable, int]] = []
        self.mask: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        raise ValueError("RaggedKVCache has no single sequence length: pass positions=cache.plan(...) to the model")

    def plan(self, batch: Sequence[tuple[Hashable, int]], device: torch.device | str = "cpu") -> torch.Tensor:
        """Set the layout of the next forward; returns positions [T] (they restart per request)."""
        ids = [rid for rid, _ in batch]
        if not batch or len(set(ids)) != len(ids) or any(n < 1 for _, n in batch):
            raise ValueError(f"batch needs distinct request ids with >= 1 new token each, got {list(batch)!r}")
        q_req, q_pos, k_req, k_pos = [], [], [], []
        for slot, (rid, n) in enumerate(batch):
            cached = self.lengths.get(rid, 0)
            q_req += [slot] * n
            q_pos += range(cached, cached + n)
            k_req += [slot] * (cached + n)
            k_pos += range(cached + n)
        q_req_t, q_pos_t = torch.tensor(q_req, device=device), torch.tensor(q_pos, device=device)
        k_req_t, k_pos_t = torch.tensor(k_req, device=device), torch.tensor(k_pos, device=device)
        self.mask = (q_req_t[:, None] == k_req_t[None, :]) & (k_pos_t[None, :] <= q_pos_t[:, None])
        self._batch = list(batch)
        return q_pos_t

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self._batch:
            raise ValueError("call plan(...) before the forward")
        counts = [n for _, n in self._batch]
        if q.shape[0] != 1 or q.shape[-2] != sum(counts):
            raise ValueError(f"packed input must be [1, {sum(counts)}] tokens, got q {tuple(q.shape)}")
        keys, values = [], []
        for (rid, _), k_new, v_new in zip(self._batch, k.split(counts, dim=-2), v.split(counts, dim=-2)):
            store_k = self.k.setdefault(rid, [None] * self.num_layers)
            store_v = self.v.setdefault(rid, [None] * self.num_layers)
            old_k, old_v = store_k[layer_idx], store_v[layer_idx]
            store_k[layer_idx] = k_new if old_k is None else torch.cat([old_k, k_new], dim=-2)
            store_v[layer_idx] = v_new if old_v is None else torch.cat([old_v, v_new], dim=-2)
            keys.append(store_k[layer_idx])
            values.append(store_v[layer_idx])
        return sdpa(q, torch.cat(keys, dim=-2), torch.cat(values, dim=-2), mask=self.mask)

    def advance(self, num_tokens: int) -> None:
        if num_tokens != sum(n for _, n in self._batch):
            raise ValueError(f"advance({num_tokens}) does not match the planned {self._batch}")
        for rid, n in self._batch:
            self.lengths[rid] = self.lengths.get(rid, 0) + n
        self._batch, self.mask = [], None

    def release(self, request_id: Hashable) -> None:
        """Drop a finished request's K/V."""
        for store in (self.k, self.v, self.lengths):
            store.pop(request_id, None)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for store in (self.k, self.v) for layers in store.values() for t in layers if t is not None)
