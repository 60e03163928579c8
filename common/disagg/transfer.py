"""The KV hand-off between the prefill and decode processes: a block pool in shared memory plus a header.

Why blocks: like vLLM's KV connectors, the prefill side writes into fixed-size blocks and the decode side
needs only (block ids, length) to find a request's K/V, so the message on the queue stays tiny whatever
the prompt length. The decode side returns the block ids once it has copied them (back-pressure: the
prefill worker waits for free blocks when the decode side falls behind, the book's "rate matching").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from multiprocessing import shared_memory

import torch

from ..model.llama import LlamaConfig


@dataclass(frozen=True)
class KVHeader:
    """What travels on the queue: where the request's K/V are and how to continue it.

    定义于 第7章 §7.7.4
    """

    request_id: str
    block_ids: tuple[int, ...]
    length: int            # prompt tokens whose K/V are in the blocks
    first_token: int       # sampled by the prefill worker
    max_tokens: int
    arrival: float         # time.perf_counter() (CLOCK_MONOTONIC: one clock for every process)
    first_token_time: float
    shipped_time: float    # K/V written into the pool, header about to be sent
    nbytes: int            # K/V bytes written for this request (used blocks only)


class SharedKVPool:
    """`num_blocks` blocks of [2 (K/V), layers, kv_heads, block_size, head_dim] in one shared-memory segment.

    The creator owns the segment (`close(unlink=True)`); workers attach by name.

    定义于 第7章 §7.7.4
    """

    def __init__(self, config: LlamaConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 name: str | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.block_shape = (2, config.num_hidden_layers, config.num_key_value_heads, block_size, config.head_dim)
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        size = num_blocks * math.prod(self.block_shape) * itemsize
        self._shm = shared_memory.SharedMemory(name=name, create=name is None, size=size if name is None else 0)
        self.name = self._shm.name
        self.blocks = torch.frombuffer(self._shm.buf, dtype=dtype, count=size // itemsize).view(
            num_blocks, *self.block_shape)

    def spec(self) -> tuple:
        """Arguments a worker needs to attach: (num_blocks, block_size, dtype name, segment name)."""
        return self.num_blocks, self.block_size, str(self.dtype).removeprefix("torch."), self.name

    @classmethod
    def attach(cls, config: LlamaConfig, spec: tuple) -> SharedKVPool:
        num_blocks, block_size, dtype, name = spec
        return cls(config, num_blocks, block_size, getattr(torch, dtype), name=name)

    def blocks_needed(self, length: int) -> int:
        return -(-length // self.block_size)

    def write(self, block_ids: list[int], k: torch.Tensor, v: torch.Tensor) -> int:
        """Copy k, v [layers, kv_heads, length, head_dim] into the blocks (one indexed copy per tensor);
        returns the bytes of K/V written (the padding of the last block is not counted)."""
        ids = torch.as_tensor(block_ids, dtype=torch.long)
        for kv, src in ((0, k), (1, v)):
            self.blocks[ids, kv] = self._to_blocks(src, len(block_ids))
        return 2 * k.numel() * k.element_size()

    def read_into(self, block_ids: tuple[int, ...], length: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy `length` tokens of K/V out of the blocks into k, v [layers, kv_heads, >= length, head_dim]."""
        ids = torch.as_tensor(block_ids, dtype=torch.long)
        for kv, dst in ((0, k), (1, v)):
            blocks = self.blocks[ids, kv]                       # [n, layers, kv_heads, block_size, head_dim]
            layers, heads, _, dim = dst.shape
            dst[:, :, :length] = blocks.permute(1, 2, 0, 3, 4).reshape(layers, heads, -1, dim)[:, :, :length]

    def _to_blocks(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """[layers, kv_heads, length, head_dim] -> [num_blocks, layers, kv_heads, block_size, head_dim]."""
        layers, heads, length, dim = x.shape
        pad = num_blocks * self.block_size - length
        if pad:
            x = torch.cat([x, x.new_zeros(layers, heads, pad, dim)], dim=2)
        return x.reshape(layers, heads, num_blocks, self.block_size, dim).permute(2, 0, 1, 3, 4)

    def close(self, unlink: bool = False) -> None:
        del self.blocks
        self._shm.close()
        if unlink:
            self._shm.unlink()
