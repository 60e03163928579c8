"""The model runner: one forward pass over a ragged batch.

All scheduled tokens of all sequences are flattened into one row [1, T] with per-token
positions, so every matmul of the step is one big GEMM whatever the mix of decodes and
prefill chunks. Attention is the only place sequences must stay apart; `PagedBatchAttention`
(the model's cache interface) writes each token's K/V into the paged store through its slot and
attends per sequence:

* decodes (first `num_decode` tokens): one batched gather of each sequence's blocks and two
  batched matmuls with a length mask (`decode_attention`) — no Python loop over requests;
* prefill chunks: cached prefix + new tokens of each chunk, causal (a loop over the few
  prefills of the step).

Everything that depends only on the batch (slots, block tables, masks) is built once per step,
not once per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import causal_mask, sdpa
from ..llama import Llama
from ..paged.kv_store import PagedKVStore
from .sequence import Sequence


@dataclass
class PrefillChunk:
    start: int                      # offset of the chunk in the flat batch
    length: int                     # new tokens
    blocks: torch.Tensor            # block ids covering the context
    context: int                    # cached prefix + new tokens
    mask: torch.Tensor              # [length, context] causal over the context


@dataclass
class BatchMetadata:
    input_ids: torch.Tensor         # [1, T]
    positions: torch.Tensor         # [T]
    slots: torch.Tensor             # [T] flat slot (block * block_size + offset) of each token
    num_decode: int
    decode_tables: torch.Tensor     # [num_decode, max_blocks]
    decode_mask: torch.Tensor       # [num_decode, 1, 1, max_blocks * block_size]
    prefills: list[PrefillChunk]
    sample_rows: torch.Tensor       # rows of the flat batch whose logits are sampled
    sample_seqs: list[Sequence]


class PagedBatchAttention:
    """The cache object handed to `Llama.hidden_states`: stores new K/V, attends over the pages."""

    seq_len = 0  # positions are always passed explicitly

    def __init__(self, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor], block_size: int,
                 store: PagedKVStore | None = None) -> None:
        """With `store` (e.g. the INT8 store), K/V go through store.write/store.gather (quantize on write,
        dequantize on read); without it, the raw tensors are indexed directly (the default fast path)."""
        self.k_cache, self.v_cache, self.block_size = k_cache, v_cache, block_size
        self.store = store
        self.meta: BatchMetadata | None = None

    def advance(self, num_tokens: int) -> None:
        pass

    def _flat(self, cache: torch.Tensor) -> torch.Tensor:
        return cache.view(-1, cache.shape[-2], cache.shape[-1])   # [num_blocks * block_size, Hkv, D]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        if self.store is None:
            kc, vc = self.k_cache[layer_idx], self.v_cache[layer_idx]
            self._flat(kc).index_copy_(0, meta.slots, k[0].transpose(0, 1))
            self._flat(vc).index_copy_(0, meta.slots, v[0].transpose(0, 1))

            def gather(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return kc[blocks], vc[blocks]
        else:
            self.store.write(layer_idx, meta.slots, k[0].transpose(0, 1), v[0].transpose(0, 1))

            def gather(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return self.store.gather(layer_idx, blocks, q.dtype)
        out = torch.empty_like(q)
        nd = meta.num_decode
        if nd:
            keys, values = gather(meta.decode_tables)
            out[0, :, :nd] = decode_attention(q[0, :, :nd].transpose(0, 1), keys.flatten(1, 2),
                                              values.flatten(1, 2), meta.decode_mask).transpose(0, 1)
        for chunk in meta.prefills:
            end = chunk.start + chunk.length
            keys, values = gather(chunk.blocks)
            keys = keys.flatten(0, 1)[:chunk.context].transpose(0, 1).unsqueeze(0)
            values = values.flatten(0, 1)[:chunk.context].transpose(0, 1).unsqueeze(0)
            fresh = chunk.context == chunk.length   # no cached prefix: plain causal, SDPA's fast path
            out[:, :, chunk.start:end] = sdpa(q[:, :, chunk.start:end], keys, values,
                                              mask=None if fresh else chunk.mask, causal=fresh)
        return out


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One query token per sequence over its gathered pages, as two batched matmuls.

    q [B, Hq, D]; keys/values [B, L, Hkv, D] (L = padded pages); mask [B, 1, 1, L] (True = valid).
    On CPU this is ~4x faster than SDPA with a mask for a single query (measured in the ch07
    notebook 7 profile), and it keeps GQA groups without repeating K/V."""
    batch, hq, dim = q.shape
    hkv = keys.shape[2]
    qg = q.view(batch, hkv, hq // hkv, dim)                                    # [B, Hkv, G, D]
    scores = (qg @ keys.permute(0, 2, 3, 1)).float() * dim ** -0.5             # [B, Hkv, G, L]
    probs = scores.masked_fill_(~mask, float("-inf")).softmax(-1).to(values.dtype)
    return (probs @ values.transpose(1, 2)).view(batch, hq, dim)


class ModelRunner:
    def __init__(self, model: Llama, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor],
                 block_size: int, block_table_of, store: PagedKVStore | None = None) -> None:
        """block_table_of(seq_id) -> list of block ids (the block manager's table); `store`: see
        PagedBatchAttention (pass it for a quantized store)."""
        self.model = model
        self.device = model.device
        self.block_size = block_size
        self.block_table_of = block_table_of
        self.attention = PagedBatchAttention(k_cache, v_cache, block_size, store)

    def prepare(self, scheduled: list[tuple[Sequence, int]], num_decode: int) -> BatchMetadata:
        """Flatten the step's tokens and build every index the attention needs (once per step)."""
        bs, dev = self.block_size, self.device
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        tables: list[list[int]] = []
        lengths: list[int] = []
        prefills: list[PrefillChunk] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        for i, (seq, n) in enumerate(scheduled):
            start, end = seq.num_computed, seq.num_computed + n
            table = self.block_table_of(seq.seq_id)
            offset = len(ids)
            ids.extend(seq.tokens[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if i < num_decode:
                tables.append(table)
                lengths.append(end)
            else:
                nblocks = (end + bs - 1) // bs
                prefills.append(PrefillChunk(offset, n, torch.tensor(table[:nblocks], device=dev), end,
                                             causal_mask(n, end, device=dev)))
            if end == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
        if tables:
            width = max(len(t) for t in tables)
            table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)
            span = torch.arange(width * bs, device=dev)
            mask = (span[None, :] < torch.tensor(lengths, device=dev)[:, None])[:, None, None, :]
        else:
            table_tensor = torch.zeros(0, 1, dtype=torch.long, device=dev)
            mask = torch.zeros(0, 1, 1, bs, dtype=torch.bool, device=dev)
        return BatchMetadata(torch.tensor([ids], device=dev), torch.tensor(positions, device=dev),
                             torch.tensor(slots, device=dev), num_decode, table_tensor, mask, prefills,
                             torch.tensor(sample_rows, dtype=torch.long, device=dev), sample_seqs)

    @torch.inference_mode()
    def execute(self, meta: BatchMetadata) -> torch.Tensor:
        """Logits [num sampled rows, vocab]; the LM head runs only on the rows that sample."""
        self.attention.meta = meta
        try:
            h = self.model.hidden_states(meta.input_ids, meta.positions, cache=self.attention)
        finally:
            self.attention.meta = None
        return self.model.lm_head(h[0, meta.sample_rows])
