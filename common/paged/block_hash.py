"""Chained block hashes, vLLM's scheme: a full block's key is sha256(parent key, its token ids).

Equal keys mean equal whole prefixes (a key covers every token before it), so a prompt is looked
up block by block and the walk stops at the first miss. sha256, not Python's `hash`: a tuple hash
is 64 bits and easy to collide on purpose, and one collision would hand a request another
request's KV (vLLM advisory GHSA-rm76-4mrf-v9r8). The prefix cache still compares the tokens on
a hit, so even a collision cannot return wrong KV. The router's prefix policy uses the same keys.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

ROOT_HASH = b""


def hash_block(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """The key of one full block: sha256 over the parent's key and the block's int64 token ids.

    定义于 第6章 §6.7.3
    """
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


def chain_hashes(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Keys of every full block of `token_ids`, each chained to the one before (a tail shorter
    than a block gets none).

    定义于 第6章 §6.7.3
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes, parent = [], ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start:start + block_size])
        hashes.append(parent)
    return hashes
