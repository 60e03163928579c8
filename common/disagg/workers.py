"""The two worker processes of the disaggregated setup (started with the spawn context by `runs`).

Each pins itself to one core with one torch thread, loads its own copy of the model, warms up, says
"ready", then serves until it reads None. Prefill: one prompt at a time (FCFS), K/V through the shared
pool, first token in the header. Decode: a continuous batch; between two steps it adopts every header
that has arrived, so a new request never waits for the running ones to finish.
"""
from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field

import torch

from ..model.attention import sdpa
from ..model.kv_cache import KVCache
from ..model.llama import Llama
from .transfer import KVHeader, SharedKVPool


def setup_worker(core: int | None, model_name: str, dtype: str, fuse: bool) -> Llama:
    """One thread, one core, a freshly loaded model (the serving layout, as the engine loads it, when `fuse`).

    定义于 第7章 §7.7.4
    """
    torch.set_num_threads(1)
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    from ..models import load_model
    return load_model(model_name, dtype, "cpu", fused=fuse)


@torch.inference_mode()
def prefill(model: Llama, prompt_ids: list[int]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(first greedy token, K, V [layers, kv_heads, length, head_dim]) of one prompt.

    定义于 第7章 §7.7.4
    """
    cache = KVCache(model.config, 1, len(prompt_ids), dtype=model.dtype)
    logits = model(torch.tensor([prompt_ids]), cache=cache, last_only=True)
    return int(logits[0, -1].argmax()), cache.k[:, 0], cache.v[:, 0]


def prefill_worker(core: int | None, model_name: str, dtype: str, fuse: bool, pool_spec: tuple, warmup_len: int,
                   inbox, to_decode, freed, ready) -> None:
    """inbox: (request_id, prompt_ids, max_tokens, arrival) or None. freed: block ids the decode side returns.
    warmup_len: prompt length of the warm-up prefill (the first calls load the kernels and fault in their memory).

    定义于 第7章 §7.7.4
    """
    model = setup_worker(core, model_name, dtype, fuse)
    pool = SharedKVPool.attach(model.config, pool_spec)
    free = list(range(pool.num_blocks))
    prefill(model, [1] * warmup_len)
    ready.put("prefill")
    while (item := inbox.get()) is not None:
        request_id, prompt_ids, max_tokens, arrival = item
        first, k, v = prefill(model, prompt_ids)
        first_time = time.perf_counter()
        need = pool.blocks_needed(len(prompt_ids))
        if need > pool.num_blocks:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens needs {need} blocks; "
                             f"the pool has {pool.num_blocks}")
        _drain(freed, free)
        while len(free) < need:
            free.extend(freed.get())   # back-pressure: wait until the decode side returns blocks
        block_ids, free = free[:need], free[need:]
        nbytes = pool.write(block_ids, k, v)
        to_decode.put(KVHeader(request_id, tuple(block_ids), len(prompt_ids), first, max_tokens, arrival,
                               first_time, time.perf_counter(), nbytes))
    to_decode.put(None)
    pool.close()


def _drain(freed, free: list[int]) -> None:
    """Move every block id the decode side has returned into `free`, without blocking."""
    while True:
        try:
            free.extend(freed.get_nowait())
        except queue.Empty:
            return


@dataclass(eq=False)   # identity: requests hold tensors
class DecodingRequest:
    """A request on the decode worker: the KV it received from prefill and the tokens so far.

    定义于 第7章 §7.7.4
    """
    header: KVHeader
    k: torch.Tensor                 # [layers, kv_heads, capacity, head_dim]
    v: torch.Tensor
    length: int                     # tokens with K/V in k, v
    tokens: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    attached_time: float = 0.0
    read_s: float = 0.0

    def finished(self, eos_token_id: int | None) -> bool:
        return len(self.tokens) >= self.header.max_tokens or self.tokens[-1] == eos_token_id


class BatchDecodeCache:
    """The model's cache interface over several requests of different lengths, one new token each.

    Attention runs per request over its own K/V (ragged lengths, no padding); everything else in the
    forward runs as one [batch, 1] matmul, which is where batching pays.

    定义于 第7章 §7.7.4
    """

    def __init__(self, requests: list[DecodingRequest]) -> None:
        self.requests = requests
        self.seq_len = 0   # unused: positions are passed explicitly

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, req in enumerate(self.requests):
            req.k[layer_idx, :, req.length] = k[i, :, 0]
            req.v[layer_idx, :, req.length] = v[i, :, 0]
            end = req.length + 1
            outs.append(sdpa(q[i:i + 1], req.k[layer_idx, None, :, :end], req.v[layer_idx, None, :, :end]))
        return torch.cat(outs)

    def advance(self, num_tokens: int) -> None:
        for req in self.requests:
            req.length += num_tokens


def adopt(model: Llama, pool: SharedKVPool, header: KVHeader) -> DecodingRequest:
    """Copy a request's K/V out of the pool into a buffer with room for its whole generation.

    定义于 第7章 §7.7.4
    """
    cfg = model.config
    capacity = header.length + header.max_tokens
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, capacity, cfg.head_dim)
    start = time.perf_counter()
    k, v = torch.empty(shape, dtype=model.dtype), torch.empty(shape, dtype=model.dtype)
    pool.read_into(header.block_ids, header.length, k, v)
    req = DecodingRequest(header, k, v, header.length, [header.first_token], [header.first_token_time])
    req.attached_time = time.perf_counter()
    req.read_s = req.attached_time - start
    return req


@torch.inference_mode()
def decode_step(model: Llama, running: list[DecodingRequest]) -> list[int]:
    """One greedy token for every running request (one batched forward).

    定义于 第7章 §7.7.4
    """
    ids = torch.tensor([[r.tokens[-1]] for r in running])
    positions = torch.tensor([[r.length] for r in running])
    logits = model(ids, positions=positions, cache=BatchDecodeCache(running))
    return logits[:, -1].argmax(-1).tolist()


def decode_worker(core: int | None, model_name: str, dtype: str, fuse: bool, pool_spec: tuple,
                  inbox, freed, results, ready, eos_token_id: int | None) -> None:
    """inbox: KVHeader or None (prefill is done). results: one dict per finished request.

    定义于 第7章 §7.7.4
    """
    model = setup_worker(core, model_name, dtype, fuse)
    pool = SharedKVPool.attach(model.config, pool_spec)
    decode_step(model, [DecodingRequest(KVHeader("warm-up", (), 8, 1, 4, 0, 0, 0, 0),
                                        *_empty_kv(model, 16), 8, [1])])
    ready.put("decode")
    running: list[DecodingRequest] = []
    upstream_done = False
    while running or not upstream_done:
        while not upstream_done:   # adopt every arrived request; block only when idle
            try:
                header = inbox.get(block=not running)
            except queue.Empty:
                break
            if header is None:
                upstream_done = True
                break
            req = adopt(model, pool, header)
            freed.put(list(header.block_ids))
            running.append(req)
        running = _retire([r for r in running if r.finished(eos_token_id)], running, results)
        if not running:
            continue
        tokens = decode_step(model, running)
        now = time.perf_counter()
        for req, token in zip(running, tokens):
            req.tokens.append(token)
            req.token_times.append(now)
        running = _retire([r for r in running if r.finished(eos_token_id)], running, results)
    pool.close()


def _retire(done: list[DecodingRequest], running: list[DecodingRequest], results) -> list[DecodingRequest]:
    """Send the finished requests' results; return the ones still running."""
    for req in done:
        h = req.header
        results.put({"request_id": h.request_id, "token_ids": req.tokens, "token_times": req.token_times,
                     "arrival": h.arrival, "prompt_len": h.length, "kv_bytes": h.nbytes,
                     "write_s": h.shipped_time - h.first_token_time, "read_s": req.read_s,
                     "handoff_s": req.attached_time - h.shipped_time})
    return [r for r in running if r not in done]


def _empty_kv(model: Llama, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, capacity, cfg.head_dim)
    return torch.zeros(shape, dtype=model.dtype), torch.zeros(shape, dtype=model.dtype)
