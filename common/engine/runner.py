"""The model runner: one forward pass over a ragged batch.

All scheduled tokens of all sequences are flattened into one row [1, T] with per-token
positions, so every matmul of the step is one big GEMM whatever the mix of decodes and
prefill chunks. Attention is the only place sequences must stay apart; `PagedBatchAttention`
(the model's cache interface) writes each token's K/V into the paged store through its slot and
attends per sequence:

* decodes (first `num_decode` tokens): the store's decode plan writes their K/V and attends for the whole
  group (on CPU one C++ call per layer reading the pages in place, else a write, one batched gather and two
  matmuls, see common.paged.decode_attention) — no Python loop over requests;
* prefill chunks, where the store reads pages in place (`store.unified_attention`, the CPU kernel): every
  prefill token is one more query row of that plan, with its sequence's table and its own length (position
  + 1, which makes it causal), so one call per layer attends for the whole step (vLLM V1's unified attention;
  on this CPU about 2x faster than SDPA's flash kernel at prompt lengths of 64-512);
* otherwise the runner writes their K/V, then each chunk attends over its cached prefix + new tokens by SDPA,
  causal (a loop over the few prefills of the step).

Everything that depends only on the batch (the store's write and gather indices, masks) is built
once per step, not once per layer. The runner talks to any `KVStore` (common.paged.kv_store) the
same way; which one (bf16 or INT8) is the engine's `kv_cache_dtype` choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.attention import causal_mask, sdpa
from ..model.llama import Llama
from ..paged.kv_store import DecodeAttention, KVStore
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
    slot_rows: torch.Tensor         # store.slot_rows of each prefill token's slot (block * block_size + offset)
    num_decode: int
    decode: DecodeAttention | None  # the decodes' K/V write and attention (store.plan_decode), None if no decodes
    prefills: list[PrefillChunk]
    sample_rows: torch.Tensor       # rows of the flat batch whose logits are sampled
    sample_seqs: list[Sequence]


class PagedBatchAttention:
    """The cache object handed to `Llama.hidden_states`: stores new K/V, attends over the pages.

    Decodes go through the step's `meta.decode` (planned by the store); prefill chunks gather their
    pages in the [kv_heads, tokens, head_dim] layout SDPA reads, in the model dtype (the INT8 store
    dequantizes while gathering).

    定义于 第5章 §5.10
    """

    seq_len = 0  # positions are always passed explicitly

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.meta: BatchMetadata | None = None

    def advance(self, num_tokens: int) -> None:
        pass

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta, nd = self.meta, self.meta.num_decode
        if not meta.prefills:   # a decode-only step: the decode plan writes the new K/V and attends, one call
            return meta.decode(layer_idx, q[0], k[0], v[0])[None]
        self.store.write_rows(layer_idx, meta.slot_rows, k[0, :, nd:], v[0, :, nd:])
        out = torch.empty_like(q)
        if nd:
            out[0, :, :nd] = meta.decode(layer_idx, q[0, :, :nd], k[0, :, :nd], v[0, :, :nd])
        for chunk in meta.prefills:
            end = chunk.start + chunk.length
            keys, values = self.store.gather_rows(layer_idx, chunk.rows)
            keys, values = keys[None, :, :chunk.context], values[None, :, :chunk.context]
            fresh = chunk.context == chunk.length   # no cached prefix: plain causal, SDPA's fast path
            out[:, :, chunk.start:end] = sdpa(q[:, :, chunk.start:end], keys, values,
                                              mask=None if fresh else chunk.mask, causal=fresh)
        return out


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
        unified = store.unified_attention
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []          # prefill tokens' (the runner writes their K/V)
        plan_slots: list[int] = []     # the plan's query rows' (it writes their K/V): decodes, every token if unified
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
            token_slots = [table[p // bs] * bs + p % bs for p in range(start, end)]
            if i < num_decode or unified:   # one query row per token, with its own length
                tables.extend([table] * n)
                lengths.extend(range(start + 1, end + 1))
                plan_slots.extend(token_slots)
            else:
                slots.extend(token_slots)
                blocks = torch.tensor(table[:(end + bs - 1) // bs], device=dev)
                prefills.append(PrefillChunk(offset, n, store.block_rows(blocks), end, causal_mask(n, end, device=dev)))
            if end == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
        return BatchMetadata(torch.tensor([ids], device=dev), torch.tensor(positions, device=dev),
                             store.slot_rows(torch.tensor(slots, dtype=torch.long, device=dev)), num_decode,
                             store.plan_decode(tables, lengths, plan_slots) if tables else None, prefills,
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
