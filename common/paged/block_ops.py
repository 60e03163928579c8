"""The two block-table operations behind fork and append, on any pool with ref counts.

Kept apart from BlockManager so they can be read (and re-implemented in lab 6) on their own:
`fork_table` shares every block; `append_slots` grows a table and applies copy-on-write to a
shared, partially filled last block — the only block a sequence ever writes into.
"""
from __future__ import annotations

from typing import Callable, Protocol


class Pool(Protocol):
    """What block_ops needs from a pool: allocate and reference counting.

    定义于 第6章 §6.3.2
    """
    def allocate(self) -> int: ...
    def incref(self, block: int) -> None: ...
    def decref(self, block: int) -> int: ...
    def ref_count(self, block: int) -> int: ...


def fork_table(pool: Pool, table: list[int]) -> list[int]:
    """A child's table: the same blocks, one more reference each.

    定义于 第6章 §6.3.2
    """
    for block in table:
        pool.incref(block)
    return list(table)


def append_slots(pool: Pool, table: list[int], num_tokens: int, num_tokens_after: int, block_size: int,
                 users: Callable[[int], int] | None = None,
                 allocate: Callable[[], int] | None = None,
                 release: Callable[[int], None] | None = None) -> list[tuple[int, int]]:
    """Grow `table` (in place) from num_tokens to num_tokens_after tokens; returns [(src, dst)] copies.

    `users(block)` counts the sequences using a block (default: its ref count; a prefix cache
    subtracts its own reference). `allocate`/`release` default to the pool's allocate/decref.

    定义于 第6章 §6.3.2
    """
    if num_tokens_after < num_tokens:
        raise ValueError(f"cannot shrink a sequence from {num_tokens} to {num_tokens_after} tokens")
    users = users or pool.ref_count
    allocate = allocate or pool.allocate
    release = release or pool.decref
    copies = []
    if num_tokens % block_size and num_tokens_after > num_tokens and users(table[-1]) > 1:
        src, dst = table[-1], allocate()
        release(src)
        table[-1] = dst
        copies.append((src, dst))
    while len(table) * block_size < num_tokens_after:
        table.append(allocate())
    return copies
