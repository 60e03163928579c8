"""Occupancy calculator: hand-checked cases and a block-by-block allocation oracle."""
import math
import random

import pytest

from common.hardware.occupancy import ARCHS, occupancy


# The oracle's own limits, typed from the CUDA C++ Programming Guide's "Technical Specifications per Compute
# Capability" table and NVIDIA's occupancy calculator (allocation granularities), not read from
# common.hardware.occupancy:
# max warps / SM, max resident blocks / SM, 32-bit registers / SM, shared memory / SM and per block (KiB).
CUDA_GUIDE = {"8.0": (64, 32, 65536, 164, 163), "9.0": (64, 32, 65536, 228, 227), "10.0": (64, 32, 65536, 228, 227)}
GPU_CC = {"A100": "8.0", "H100": "9.0", "B200": "10.0"}
REG_UNIT, SMEM_UNIT, SMEM_RESERVED = 256, 128, 1024


def _oracle(arch, threads, regs, smem):
    """Place blocks on one SM one at a time until some resource is exhausted."""
    max_warps, max_blocks, sm_regs, smem_kib, _ = CUDA_GUIDE[GPU_CC[arch]]
    warps = math.ceil(threads / 32)
    reg_per_block = math.ceil(regs * 32 / REG_UNIT) * REG_UNIT * warps
    smem_per_block = math.ceil((smem + SMEM_RESERVED) / SMEM_UNIT) * SMEM_UNIT if smem else 0
    blocks = used_warps = used_regs = used_smem = 0
    while True:
        if (blocks + 1 > max_blocks or used_warps + warps > max_warps
                or used_regs + reg_per_block > sm_regs or used_smem + smem_per_block > smem_kib * 1024):
            return blocks
        blocks, used_warps = blocks + 1, used_warps + warps
        used_regs, used_smem = used_regs + reg_per_block, used_smem + smem_per_block


def test_every_arch_is_in_the_guide_table():
    assert set(ARCHS) == set(GPU_CC)
    for name, arch in ARCHS.items():
        assert arch.compute_capability == GPU_CC[name]


def test_hand_cases_h100():
    full = occupancy("H100", 256, 32)
    assert (full.blocks_per_sm, full.active_warps, full.occupancy) == (8, 64, 1.0)
    regs = occupancy("H100", 256, 128)
    assert (regs.blocks_per_sm, regs.occupancy, regs.limiter) == (2, 0.25, "registers")
    smem = occupancy("H100", 128, 32, 100 * 1024)
    assert (smem.blocks_per_sm, smem.limiter) == (2, "shared memory")
    tiny_blocks = occupancy("H100", 32, 16)
    assert (tiny_blocks.blocks_per_sm, tiny_blocks.occupancy, tiny_blocks.limiter) == (32, 0.5, "blocks")


def test_matches_oracle_on_random_kernels(rng_seed):
    rng = random.Random(rng_seed)
    for _ in range(300):
        arch = rng.choice(list(GPU_CC))
        threads, regs = rng.randint(1, 1024), rng.randint(16, 255)
        smem = rng.choice([0, rng.randint(1, CUDA_GUIDE[GPU_CC[arch]][4] * 1024)])
        assert occupancy(arch, threads, regs, smem).blocks_per_sm == _oracle(arch, threads, regs, smem)


@pytest.mark.parametrize("args", [("H100", 0), ("H100", 2048), ("H100", 128, 300), ("H100", 128, 32, 10**6),
                                  ("V100", 128)])
def test_bad_inputs_raise(args):
    with pytest.raises(ValueError):
        occupancy(*args)
