"""Occupancy calculator: hand-checked cases and a block-by-block allocation oracle."""
import math
import random

import pytest

from common.occupancy import ARCHS, occupancy


def _oracle(arch, threads, regs, smem):
    """Place blocks on one SM one at a time until some resource is exhausted."""
    a = ARCHS[arch]
    warps = math.ceil(threads / 32)
    reg_per_block = math.ceil(regs * 32 / 256) * 256 * warps
    smem_per_block = math.ceil((smem + 1024) / 128) * 128 if smem else 0
    blocks = used_warps = used_regs = used_smem = 0
    while True:
        if (blocks + 1 > a.max_blocks_per_sm or used_warps + warps > a.max_warps_per_sm
                or used_regs + reg_per_block > a.registers_per_sm or used_smem + smem_per_block > a.shared_per_sm):
            return blocks
        blocks, used_warps = blocks + 1, used_warps + warps
        used_regs, used_smem = used_regs + reg_per_block, used_smem + smem_per_block


def test_hand_cases_h100():
    full = occupancy("H100", 256, 32)
    assert (full.blocks_per_sm, full.active_warps, full.occupancy) == (8, 64, 1.0)
    regs = occupancy("H100", 256, 128)
    assert (regs.blocks_per_sm, regs.occupancy, regs.limiter) == (2, 0.25, "registers")
    smem = occupancy("H100", 128, 32, 100 * 1024)
    assert (smem.blocks_per_sm, smem.limiter) == (2, "shared memory")
    tiny_blocks = occupancy("H100", 32, 16)
    assert (tiny_blocks.blocks_per_sm, tiny_blocks.occupancy, tiny_blocks.limiter) == (32, 0.5, "blocks")


def test_matches_oracle_on_random_kernels():
    rng = random.Random(0)
    for _ in range(300):
        arch = rng.choice(list(ARCHS))
        threads, regs = rng.randint(1, 1024), rng.randint(16, 255)
        smem = rng.choice([0, rng.randint(1, ARCHS[arch].shared_per_block)])
        assert occupancy(arch, threads, regs, smem).blocks_per_sm == _oracle(arch, threads, regs, smem)


@pytest.mark.parametrize("args", [("H100", 0), ("H100", 2048), ("H100", 128, 300), ("H100", 128, 32, 10**6),
                                  ("V100", 128)])
def test_bad_inputs_raise(args):
    with pytest.raises(ValueError):
        occupancy(*args)
