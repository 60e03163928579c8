"""A paged KV cache with the model's cache interface, for a group of sequences at equal length.

`Llama(input_ids [B, S], cache=PagedSeqCache(...))` writes each sequence's new K/V into its own
blocks (slots from the BlockManager) and attends over its block table: prefill chunks with a
causal mask over the gathered context, decode steps (S = 1) with `paged_attention`. Forked
samples, prefix-cache hits (start at num_cached_tokens) and copy-on-write all go through the
BlockManager; this class only moves tensors. (The engine batches ragged sequences itself.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..model.attention import causal_mask, sdpa
from .block_manager import BlockManager
from .kv_store import PagedKVStore
from .paged_attention import paged_attention

DecodeFn = Callable[..., torch.Tensor]


class PagedSeqCache:
    """The model's cache interface over a block manager and paged store, for equal-length sequences.

    定义于 第6章 §6.3.2
    """
    def __init__(self, manager: BlockManager, store: PagedKVStore, seq_ids: Sequence[object], seq_len: int,
                 decode_fn: DecodeFn = paged_attention) -> None:
        if manager.block_size != store.block_size:
            raise ValueError(f"block sizes differ: manager {manager.block_size}, store {store.block_size}")
        self.manager, self.store, self.seq_ids = manager, store, list(seq_ids)
        self.seq_len, self.decode_fn = seq_len, decode_fn
        self._step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _prepare(self, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slots for the new tokens and block tables, computed once per forward (layer 0)."""
        end = self.seq_len + new
        slots, tables = [], []
        for sid in self.seq_ids:
            if self.manager.num_tokens(sid) < end:
                raise ValueError(f"sequence {sid!r} has slots for {self.manager.num_tokens(sid)} tokens, "
                                 f"{end} needed: call append_slots first")
            slots.append(self.manager.slot_mapping(sid, self.seq_len, end))
            tables.append(self.manager.block_table(sid)[:-(-end // self.manager.block_size)])
        width = max(len(t) for t in tables)
        tables = [t + [0] * (width - len(t)) for t in tables]
        return (torch.tensor(slots, device=device), torch.tensor(tables, device=device),
                torch.full((len(self.seq_ids),), end, device=device))

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, _, new, _ = q.shape
        if B != len(self.seq_ids):
            raise ValueError(f"batch of {B} for {len(self.seq_ids)} sequences")
        if layer_idx == 0 or self._step is None:
            self._step = self._prepare(new, q.device)
        slots, tables, lens = self._step
        self.store.write(layer_idx, slots.flatten(), k.transpose(1, 2).flatten(0, 1), v.transpose(1, 2).flatten(0, 1))
        kc, vc = self.store.k_cache[layer_idx], self.store.v_cache[layer_idx]
        if new == 1:
            return self.decode_fn(q[:, :, 0], kc, vc, tables, lens)[:, :, None]
        end = self.seq_len + new
        keys = kc[tables].flatten(1, 2)[:, :end].transpose(1, 2)
        values = vc[tables].flatten(1, 2)[:, :end].transpose(1, 2)
        return sdpa(q, keys, values, mask=causal_mask(new, end, device=q.device))

    def advance(self, num_tokens: int) -> None:
        self.seq_len += num_tokens
        self._step = None
