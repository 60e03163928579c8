"""The physical paged KV memory, and `KVStore`: what the engine asks of it.

Token t of a sequence lives at slot table[t // block_size] * block_size + t % block_size.
`PagedKVStore` keeps per layer K and V as [num_blocks, block_size, kv_heads, head_dim] (the picture of
chapter 6), so a flat view [num_blocks * block_size, kv_heads, head_dim] is written with one index_copy
per layer. `HeadMajorKVStore` keeps the same blocks as [kv_heads, num_blocks, block_size, head_dim],
the layout decode attention reads; it and its INT8 twin (`common.quant.kv_int8_paged`) are the
engine's stores, chosen by `kv_cache_dtype` from `common.engine.kv_stores.KV_STORES`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch

from ..model.kv_math import kv_bytes_per_token
from ..model.llama import LlamaConfig
from .decode_attention import SUPPORTED_DTYPES, GatherDecode, KernelDecode, decode_kernel_available

# layer, q [Hq, B, D], the new k and v [Hkv, B, D] -> attention output [Hq, B, D] of B query rows, each over its
# own pages and length (the plan stores k and v at the rows' slots first)
DecodeAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class KVStore(Protocol):
    """The paged KV store as the engine's runner uses it (one per `kv_cache_dtype`).

    Indices are built once per step (`slot_rows`, `block_rows`, `plan_decode`) and reused by every layer;
    `write_rows` stores new K/V (the prefill tokens'), `gather_rows` returns a batch's pages in `dtype` in the
    [kv_heads, tokens, head_dim] layout the attention matmuls read, and `plan_decode` returns the step's
    decode attention, which also stores the decode tokens' K/V (the store picks how: a kernel over its own
    pages, or write + gather + matmuls). When `unified_attention` is true that plan takes the prefill tokens
    too, and the step needs no other attention. A store sizes itself:
    `num_blocks_for_memory` divides a byte budget by its own `bytes_per_token` × block_size.

    定义于 第6章 §6.3.2
    """
    config: LlamaConfig
    num_blocks: int
    block_size: int
    dtype: torch.dtype              # what gather_rows returns (the model dtype)
    unified_attention: bool         # plan_decode also serves prefill tokens (one attention call per layer)

    @classmethod
    def bytes_per_token(cls, config: LlamaConfig, dtype: torch.dtype) -> int: ...

    @classmethod
    def num_blocks_for_memory(cls, config: LlamaConfig, num_bytes: int, block_size: int,
                              dtype: torch.dtype) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def slot_rows(self, slots: torch.Tensor) -> torch.Tensor: ...

    def block_rows(self, blocks: torch.Tensor) -> torch.Tensor: ...

    def write_rows(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def gather_rows(self, layer: int, rows: torch.Tensor,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def plan_decode(self, tables: list[list[int]], lengths: list[int], slots: list[int]) -> DecodeAttention: ...

    def copy_blocks(self, pairs: Iterable[tuple[int, int]]) -> None: ...


class PagedKVStore:
    """Per-layer K and V in fixed-size blocks, addressed through block tables.

    The block-major layout the book draws, used by the chapter-6 notebooks, `PagedSeqCache` and
    `paged_attention`. The engine does not use it: its stores (`KVStore`) are head-major.

    定义于 第6章 §6.3.2
    """
    block_dim = 0   # the dimension of each cache tensor that indexes blocks

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}")
        self.config, self.num_blocks, self.block_size, self.dtype = config, num_blocks, block_size, dtype
        shape = self.cache_shape(config, num_blocks, block_size)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @staticmethod
    def cache_shape(config: LlamaConfig, num_blocks: int, block_size: int) -> tuple[int, ...]:
        return num_blocks, block_size, config.num_key_value_heads, config.head_dim

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor indexed by [block, offset, ...]: what copy_blocks copies and nbytes counts."""
        return [*self.k_cache, *self.v_cache]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.buffers())

    @classmethod
    def bytes_per_token(cls, config: LlamaConfig, dtype: torch.dtype) -> int:
        """K and V of every layer for one token, as this store holds them."""
        return kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
                                  dtype.itemsize)

    @classmethod
    def num_blocks_for_memory(cls, config: LlamaConfig, num_bytes: int, block_size: int, dtype: torch.dtype) -> int:
        """How many blocks fit in a KV budget of `num_bytes` (by this store's own bytes_per_token)."""
        return int(num_bytes // (cls.bytes_per_token(config, dtype) * block_size))

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [tokens, kv_heads, head_dim] at the given flat slots."""
        slots = self.check_write(layer, slot_mapping, k, v)
        flat = (-1,) + tuple(self.k_cache[layer].shape[2:])
        self.k_cache[layer].view(flat).index_copy_(0, slots, k.to(self.k_cache[layer].dtype))
        self.v_cache[layer].view(flat).index_copy_(0, slots, v.to(self.v_cache[layer].dtype))

    def check_write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Validate a write's shapes and slots; the slots as a long tensor on k's device."""
        token_shape = (self.config.num_key_value_heads, self.config.head_dim)
        if k.shape != v.shape or k.shape[0] != slot_mapping.numel() or tuple(k.shape[1:]) != token_shape:
            raise ValueError(f"k {tuple(k.shape)}, v {tuple(v.shape)} do not match {slot_mapping.numel()} slots "
                             f"of [{', '.join(map(str, token_shape))}]")
        slots = slot_mapping.to(device=k.device, dtype=torch.long)
        if slots.numel() and (slots.min() < 0 or slots.max() >= self.num_blocks * self.block_size):
            raise ValueError("slot out of range")
        return slots

    def copy_blocks(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Apply copy-on-write copies (src block → dst block) in every layer."""
        pairs = list(pairs)
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], device=self.k_cache[0].device)
        dst = torch.tensor([d for _, d in pairs], device=self.k_cache[0].device)
        for cache in self.buffers():
            cache.index_copy_(self.block_dim, dst, cache.index_select(self.block_dim, src))

    def gather(self, layer: int, blocks: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given blocks, [*blocks.shape, block_size, kv_heads, head_dim], in `dtype`."""
        return self.k_cache[layer][blocks].to(dtype), self.v_cache[layer][blocks].to(dtype)


class HeadMajorKVStore(PagedKVStore):
    """The same blocks stored per layer as [kv_heads, num_blocks, block_size, head_dim]: the engine's store.

    Why: decode attention reads, for every (kv head, sequence), the sequence's pages as one
    [tokens, head_dim] matrix. With heads outermost, one `index_select` over rows
    `head * num_blocks + block` lands K/V directly in [kv_heads, batch, tokens, head_dim], the
    layout the two attention matmuls consume, so no transpose copy follows the gather (about
    3x faster decode attention on CPU than gathering [block, offset, head, dim] pages; measured in
    the chapter 7 engine notebook). Block ids, slots and copy-on-write work exactly as in the
    parent class; `gather` still returns the parent's layout for code that expects it.
    Implements `KVStore` for kv_cache_dtype="auto" (K/V in the model dtype).

    定义于 第6章 §6.3.2
    """

    block_dim = 1

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        super().__init__(config, num_blocks, block_size, dtype, device)
        self._decode_buffers: tuple[torch.Tensor, torch.Tensor] | None = None   # GatherDecode's, reused across steps

    @staticmethod
    def cache_shape(config: LlamaConfig, num_blocks: int, block_size: int) -> tuple[int, ...]:
        return config.num_key_value_heads, num_blocks, block_size, config.head_dim

    def head_rows(self, slots_or_blocks: torch.Tensor, per_head: int) -> torch.Tensor:
        """Row ids into the [kv_heads * per_head, ...] flat view for every head: h * per_head + i."""
        heads = torch.arange(self.config.num_key_value_heads, device=slots_or_blocks.device)
        return (heads[:, None] * per_head + slots_or_blocks.reshape(1, -1)).reshape(-1)

    def slot_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Where `write_rows` puts tokens at `slots` [T]: rows of the [kv_heads * slots, head_dim] view."""
        return self.head_rows(slots, self.num_blocks * self.block_size)

    def block_rows(self, blocks: torch.Tensor) -> torch.Tensor:
        """What `gather_rows` reads for `blocks` (any shape): rows of the [kv_heads * blocks, block_size, D] view."""
        return self.head_rows(blocks, self.num_blocks)

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [tokens, kv_heads, head_dim] at the given flat slots."""
        slots = self.check_write(layer, slot_mapping, k, v)
        self.write_rows(layer, self.slot_rows(slots), k.transpose(0, 1), v.transpose(0, 1))

    def write_rows(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Unchecked write of k/v [kv_heads, tokens, head_dim] at precomputed `slot_rows` (the hot path)."""
        dim = self.config.head_dim
        for cache, x in ((self.k_cache[layer], k), (self.v_cache[layer], v)):
            cache.view(-1, dim).index_copy_(0, rows, x.reshape(-1, dim).to(cache.dtype))

    def gather_rows(self, layer: int, rows: torch.Tensor,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V pages at precomputed `block_rows(blocks)`, as [kv_heads, rows/heads * block_size, D] in `dtype`.
        `out`: two reusable [rows, block_size, D] buffers of `dtype` (every layer of a step gathers the
        same amount; reusing them spares a fresh multi-MB allocation per layer)."""
        heads, dim = self.config.num_key_value_heads, self.config.head_dim
        caches = (self.k_cache[layer], self.v_cache[layer])
        if out is None:
            return tuple(c.view(-1, self.block_size, dim).index_select(0, rows).view(heads, -1, dim) for c in caches)
        return tuple(torch.index_select(c.view(-1, self.block_size, dim), 0, rows, out=o).view(heads, -1, dim)
                     for c, o in zip(caches, out))

    @property
    def unified_attention(self) -> bool:
        """Whether `plan_decode` reads the pages in place (the C++ kernel: CPU, a bf16/fp32 store, a compiler).
        Then a step's prefill tokens are query rows of the same plan, each with its own length (position + 1:
        causal by construction), and one call per layer attends for the whole step (vLLM V1's unified attention).
        The gather path would copy a chunk's pages once per token, so prefill chunks keep SDPA there."""
        return (self.k_cache[0].device.type == "cpu" and self.dtype in SUPPORTED_DTYPES
                and self.dtype == self.k_cache[0].dtype and decode_kernel_available())

    def plan_decode(self, tables: list[list[int]], lengths: list[int], slots: list[int]) -> DecodeAttention:
        """This step's attention for query rows with these block tables and lengths (the row's own token included),
        whose new K/V go to these flat slots (block * block_size + offset): one row per decoding sequence, and
        when `unified_attention` one per prefill token too.

        `KernelDecode` (when `unified_attention`) reads the pages in place. Otherwise `GatherDecode` (gather +
        matmuls) through two buffers the store keeps across steps."""
        if self.unified_attention:
            return KernelDecode(self, tables, lengths, slots)
        shape = (self.config.num_key_value_heads * len(tables) * max(len(t) for t in tables), self.block_size,
                 self.config.head_dim)
        buffers = self._decode_buffers
        if buffers is None or buffers[0].shape != shape:
            buffers = self._decode_buffers = tuple(torch.empty(shape, dtype=self.dtype, device=self.k_cache[0].device)
                                                   for _ in range(2))
        return GatherDecode(self, tables, lengths, slots, buffers)

    def gather(self, layer: int, blocks: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Parent layout [*blocks.shape, block_size, kv_heads, head_dim]."""
        return (self.k_cache[layer][:, blocks].movedim(0, -2).to(dtype),
                self.v_cache[layer][:, blocks].movedim(0, -2).to(dtype))
