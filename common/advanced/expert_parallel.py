"""§11.3 / §11.8.1 expert parallelism (EP) over processes with torch.distributed (gloo):
dispatch and combine by all_to_all.

Each of `world` ranks owns num_experts / world experts and 1/world of the tokens. One MoE layer:
  1. route locally (top-k), sort the (token, slot) assignments by the rank that owns their expert;
  2. all_to_all_single of the counts, then of the token vectors (dispatch);
  3. every rank runs its own experts on what it received;
  4. all_to_all_single back (combine), weight by the router and sum the k slots of each token.
Bytes are counted per rank for the two all_to_all's of hidden vectors (the counts and ids are small and
counted separately). `run_expert_parallel` spawns the ranks and returns the gathered output, which must equal
the single-process `common.advanced.moe.moe_forward` on the same tokens.
"""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.advanced.moe import expert_ffn, route


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ep_layer(x: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int,
             rank: int, world: int) -> tuple[torch.Tensor, dict[str, int]]:
    """One MoE layer under EP on this rank's tokens x [T, H]. gate_up/down are ALL experts' weights; this
    rank uses only its slice (experts rank*E/world ... (rank+1)*E/world - 1). Returns (out [T, H], bytes).

    定义于 第11章 §11.8.1
    """
    num_experts, hidden = router.shape[0], x.shape[1]
    local = num_experts // world
    weights, ids = route(torch.nn.functional.linear(x, router), top_k)
    flat_ids = ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)                 # grouped by expert, hence by owner rank
    owner = flat_ids[order] // local
    send_counts = torch.bincount(owner, minlength=world)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts)
    send_x = x[order // top_k]
    send_e = flat_ids[order]
    recv_x = x.new_empty(int(recv_counts.sum()), hidden)
    recv_e = send_e.new_empty(int(recv_counts.sum()))
    splits_out, splits_in = send_counts.tolist(), recv_counts.tolist()
    dist.all_to_all_single(recv_x, send_x, splits_in, splits_out)       # dispatch
    dist.all_to_all_single(recv_e, send_e, splits_in, splits_out)
    y = torch.empty_like(recv_x)
    for expert in range(rank * local, (rank + 1) * local):
        rows = (recv_e == expert).nonzero().squeeze(1)
        if rows.numel():
            y[rows] = expert_ffn(recv_x[rows], gate_up[expert], down[expert])
    back = torch.empty_like(send_x)
    dist.all_to_all_single(back, y, splits_out, splits_in)              # combine
    out = torch.zeros_like(x)
    w = weights.reshape(-1)[order].to(x.dtype)
    out.index_add_(0, order // top_k, back * w[:, None])
    elem = x.element_size()
    remote_sent = sum(n for r, n in enumerate(splits_out) if r != rank)
    remote_recv = sum(n for r, n in enumerate(splits_in) if r != rank)
    stats = {"dispatch_bytes_sent": remote_sent * hidden * elem, "combine_bytes_sent": remote_recv * hidden * elem,
             "ids_and_counts_bytes_sent": remote_sent * send_e.element_size() + world * send_counts.element_size(),
             "local_assignments": splits_out[rank], "remote_assignments": remote_sent}
    return out, stats


def _worker(rank: int, world: int, port: int, folder: str, top_k: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = torch.load(Path(folder) / "in.pt")
        x = data["x"].chunk(world)[rank]
        with torch.no_grad():
            out, stats = ep_layer(x, data["router"], data["gate_up"], data["down"], top_k, rank, world)
        torch.save({"out": out, "stats": stats}, Path(folder) / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_expert_parallel(x: torch.Tensor, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                        top_k: int, world: int = 2) -> tuple[torch.Tensor, list[dict[str, int]]]:
    """Spawn `world` gloo ranks, split x's tokens across them, run one EP MoE layer; return the gathered
    output [T, H] and each rank's byte counts.

    定义于 第11章 §11.8.1
    """
    if router.shape[0] % world:
        raise ValueError(f"{router.shape[0]} experts do not split over {world} ranks")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"x": x, "router": router, "gate_up": gate_up, "down": down}, Path(tmp) / "in.pt")
        env_before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"      # one core per rank on a small CPU
        try:
            mp.start_processes(_worker, args=(world, _free_port(), tmp, top_k), nprocs=world, join=True,
                               start_method="spawn")
        finally:
            if env_before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_before
        parts = [torch.load(Path(tmp) / f"out{r}.pt") for r in range(world)]
    return torch.cat([p["out"] for p in parts]), [p["stats"] for p in parts]
