"""Occupancy (§3.2.7): how many blocks and warps of a kernel one SM holds at once, and which
resource (threads/warps, block slots, registers, shared memory) stops it.

Same rules as NVIDIA's occupancy calculator: registers are allocated per warp in chunks of
256, shared memory per block in chunks of 128 bytes plus 1 KiB the runtime reserves per block.
Occupancy is active warps / maximum warps: it hides latency, it is not a speed-up by itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

WARP_SIZE = 32


@dataclass(frozen=True)
class SMArch:
    """Per-SM limits of one GPU architecture (threads, warps, blocks, registers, shared memory).

    定义于 第3章 §3.2.7
    """
    name: str
    compute_capability: str
    max_threads_per_block: int
    max_warps_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int
    max_registers_per_thread: int
    register_alloc_unit: int      # registers, per warp
    shared_per_sm: int            # bytes usable by blocks (max carve-out)
    shared_per_block: int         # bytes, opt-in maximum
    shared_alloc_unit: int
    shared_reserved_per_block: int


# CUDA C Programming Guide, "Compute capabilities" table (technical specifications per CC).
ARCHS: dict[str, SMArch] = {a.name: a for a in [
    SMArch("A100", "8.0", 1024, 64, 32, 65536, 255, 256, 164 * 1024, 163 * 1024, 128, 1024),
    SMArch("H100", "9.0", 1024, 64, 32, 65536, 255, 256, 228 * 1024, 227 * 1024, 128, 1024),
    SMArch("B200", "10.0", 1024, 64, 32, 65536, 255, 256, 228 * 1024, 227 * 1024, 128, 1024),
]}


@dataclass(frozen=True)
class Occupancy:
    """A kernel's occupancy on one SM: blocks and warps resident, and which limit binds.

    定义于 第3章 §3.2.7
    """
    arch: str
    warps_per_block: int
    blocks_per_sm: int
    max_warps_per_sm: int
    limits: dict[str, int]        # blocks per SM each resource alone would allow

    @property
    def active_warps(self) -> int:
        return self.blocks_per_sm * self.warps_per_block

    @property
    def occupancy(self) -> float:
        return self.active_warps / self.max_warps_per_sm

    @property
    def limiter(self) -> str:
        """The resource that allows the fewest blocks (ties: first in warps, blocks, registers, shared memory)."""
        return min(self.limits, key=lambda k: self.limits[k])


def _round_up(value: int, unit: int) -> int:
    return math.ceil(value / unit) * unit


def occupancy(arch: str | SMArch, threads_per_block: int, registers_per_thread: int = 32,
              shared_bytes_per_block: int = 0) -> Occupancy:
    """Active blocks per SM for a kernel launched with these per-block resources.

    定义于 第3章 §3.2.7
    """
    a = arch if isinstance(arch, SMArch) else ARCHS.get(arch)
    if a is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    if not 1 <= threads_per_block <= a.max_threads_per_block:
        raise ValueError(f"threads_per_block must be in 1..{a.max_threads_per_block}, got {threads_per_block}")
    if not 1 <= registers_per_thread <= a.max_registers_per_thread:
        raise ValueError(f"registers_per_thread must be in 1..{a.max_registers_per_thread}, got {registers_per_thread}")
    if not 0 <= shared_bytes_per_block <= a.shared_per_block:
        raise ValueError(f"shared memory per block must be in 0..{a.shared_per_block} bytes, "
                         f"got {shared_bytes_per_block}")
    warps = math.ceil(threads_per_block / WARP_SIZE)
    regs_per_warp = _round_up(registers_per_thread * WARP_SIZE, a.register_alloc_unit)
    limits = {
        "warps": a.max_warps_per_sm // warps,
        "blocks": a.max_blocks_per_sm,
        "registers": (a.registers_per_sm // regs_per_warp) // warps,
    }
    if shared_bytes_per_block:
        per_block = _round_up(shared_bytes_per_block + a.shared_reserved_per_block, a.shared_alloc_unit)
        limits["shared memory"] = a.shared_per_sm // per_block
    else:
        limits["shared memory"] = a.max_blocks_per_sm
    return Occupancy(a.name, warps, min(limits.values()), a.max_warps_per_sm, limits)
