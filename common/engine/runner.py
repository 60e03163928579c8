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

Everything that depends only on the batch (the store's write and gather indices, masks) is built
once per step, not once per layer. The runner talks to any `KVStore` (common.paged.kv_store) the
same way; which one (bf16 or INT8) is the engine's `kv_cache_dtype` choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.attention import causal_mask, sdpa
from ..model.llama import Llama
from ..paged.kv_store import KVStore
from .sequence import Sequence


@dataclass
class PrefillChunk:
    """Where one prefill chunk sits in the flat batch and which KV blocks it attends to.

    定义于 第5章 §5.10
    """
    start: int                      # offset of the chunk in the flat batch
    length: int                     # new tokens
    rows: torch.Tensor              # store.block_rows of the blocks covering the context
    context: int                    # cached prefix + new tokens
    mask: torch.Tensor              # [length, context] causal over the context


@dataclass
class BatchMetadata:
    """Everything one forward pass over a ragged batch needs: token ids, positions, KV slots, tables.

    定义于 第5章 §5.10
    """
    input_ids: torch.Tensor         # [1, T]
    positions: torch.Tensor         # [T]
    slot_rows: torch.Tensor         # store.slot_rows of each token's slot (block * block_size + offset)
    num_decode: int
    decode_rows: torch.Tensor       # store.block_rows of the decodes' padded tables [num_decode, max_blocks]
    decode_valid: torch.Tensor      # [num_decode, max_blocks * block_size], True = a real key
    prefills: list[PrefillChunk]
    sample_rows: torch.Tensor       # rows of the flat batch whose logits are sampled
    sample_seqs: list[Sequence]


class PagedBatchAttention:
    """The cache object handed to `Llama.hidden_states`: stores new K/V, attends over the pages.

    The store returns every batch's pages in the [kv_heads, batch, tokens, head_dim] layout the
    attention matmuls read, in the model dtype (the INT8 store dequantizes while gathering).

    定义于 第5章 §5.10
    """

    seq_len = 0  # positions are always passed explicitly

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.meta: BatchMetadata | None = None
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def advance(self, num_tokens: int) -> None:
        pass

    def _decode_pages(self, layer: int, rows: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decodes' K/V as [kv_heads, batch, max_blocks * block_size, head_dim], gathered into two
        buffers reused by every layer of the step (the same gather size in each)."""
        shape = (rows.numel(), self.store.block_size, self.store.config.head_dim)
        if self._buffers is None or self._buffers[0].shape != shape:
            self._buffers = tuple(torch.empty(shape, dtype=self.store.dtype, device=rows.device) for _ in range(2))
        k, v = self.store.gather_rows(layer, rows, self._buffers)
        return k.view(k.shape[0], batch, -1, k.shape[-1]), v.view(v.shape[0], batch, -1, v.shape[-1])

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        self.store.write_rows(layer_idx, meta.slot_rows, k[0], v[0])
        out = torch.empty_like(q)
        nd = meta.num_decode
        if nd:
            keys, values = self._decode_pages(layer_idx, meta.decode_rows, nd)
            out[0, :, :nd] = decode_attention(q[0, :, :nd], keys, values, meta.decode_valid)
        for chunk in meta.prefills:
            end = chunk.start + chunk.length
            keys, values = self.store.gather_rows(layer_idx, chunk.rows)
            keys, values = keys[None, :, :chunk.context], values[None, :, :chunk.context]
            fresh = chunk.context == chunk.length   # no cached prefix: plain causal, SDPA's fast path
            out[:, :, chunk.start:end] = sdpa(q[:, :, chunk.start:end], keys, values,
                                              mask=None if fresh else chunk.mask, causal=fresh)
        return out


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One query token per sequence over its gathered pages, as two batched matmuls.

    q [Hq, B, D]; keys/values [Hkv, B, L, D] (L = padded pages); valid [B, L] (True = a real key).
    Returns [Hq, B, D]. GQA groups share their K/V without repeating them, and K is read through a
    transposed view, so nothing is copied between the gather and the matmuls. On CPU this is
    several times faster than SDPA with a mask for a single query (chapter 7, notebook 7).

    定义于 第5章 §5.10
    """
    hq, batch, dim = q.shape
    hkv = keys.shape[0]
    qg = q.view(hkv, hq // hkv, batch, dim).transpose(1, 2)                     # [Hkv, B, G, D]
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float().mul_(dim ** -0.5)  # [Hkv, B, G, L]
    probs = scores.masked_fill_(~valid[None, :, None, :], float("-inf")).softmax(-1).to(values.dtype)
    return torch.matmul(probs, values).transpose(1, 2).reshape(hq, batch, dim)


class ModelRunner:
    """Runs the model over one scheduled ragged batch and writes its K/V into the paged store.

    定义于 第5章 §5.10
    """
    def __init__(self, model: Llama, store: KVStore, block_table_of) -> None:
        """block_table_of(seq_id) -> list of block ids (the block manager's table)."""
        self.model = model
        self.device = model.device
        self.store = store
        self.block_size = store.block_size
        self.block_table_of = block_table_of
        self.attention = PagedBatchAttention(store)

    def prepare(self, scheduled: list[tuple[Sequence, int]], num_decode: int) -> BatchMetadata:
        """Flatten the step's tokens and build every index the attention needs (once per step)."""
        bs, dev, store = self.block_size, self.device, self.store
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
                blocks = torch.tensor(table[:(end + bs - 1) // bs], device=dev)
                prefills.append(PrefillChunk(offset, n, store.block_rows(blocks), end, causal_mask(n, end, device=dev)))
            if end == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
        width = max((len(t) for t in tables), default=1)
        table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev).view(-1, width)
        valid = torch.arange(width * bs, device=dev)[None, :] < torch.tensor(lengths, device=dev).view(-1, 1)
        return BatchMetadata(torch.tensor([ids], device=dev), torch.tensor(positions, device=dev),
                             store.slot_rows(torch.tensor(slots, device=dev)), num_decode,
                             store.block_rows(table_tensor), valid, prefills,
                             torch.tensor(sample_rows, dtype=torch.long, device=dev), sample_seqs)

    @torch.inference_mode()
    def execute(self, meta: BatchMetadata) -> torch.Tensor:
        """Logits [num sampled rows, vocab]; the LM head runs only on the rows that sample."""
        self.attention.meta = meta
        try:
            h = self.model.hidden_states(meta.input_ids, meta.positions, cache=self.attention)
        finally:
            self.attention.meta = None
        return self.model.logits(h[0, meta.sample_rows])
