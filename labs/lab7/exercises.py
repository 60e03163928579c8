"""Lab 7: the heart of an iteration-level scheduler.

Each step the engine (common/engine/scheduler.py) asks four questions; you answer them here.
Sequences are `common.engine.sequence.Sequence` objects; the fields you need:
    seq.arrival (float, smaller = earlier), seq.priority (int, smaller = more urgent),
    seq.num_remaining (tokens still to compute), seq.num_tokens (prompt + outputs so far),
    seq.job_size (prompt + max_tokens).
Run `make lab-7` to grade this file.
"""
from __future__ import annotations

from typing import Callable, Iterable


def policy_key(seq, policy: str, now: float = 0.0, aging: float = 0.0) -> tuple:
    """Sort key for the waiting queue; the smallest key runs first.

    fcfs:     (arrival,)
    priority: (priority - aging * max(0, now - arrival), arrival)   # aging lets old requests climb
    sjf:      (job_size, arrival)
    Any other policy: raise ValueError naming the policy.
    """
    # TODO: return the tuple for each policy; raise ValueError for an unknown one
    raise NotImplementedError("policy_key")


def chunk_tokens(num_remaining: int, budget: int, enable_chunked_prefill: bool) -> int:
    """How many of a sequence's remaining tokens run this step.

    0 if nothing remains or the budget is empty; all of them if they fit in the budget;
    otherwise the budget with chunked prefill, or 0 without it (an unchunked prefill runs whole).
    """
    # TODO: four cases, see the docstring
    raise NotImplementedError("chunk_tokens")


def pick_victim(running: Iterable):
    """The running sequence to preempt when blocks run out: the least urgent one (largest
    priority value); among equals, the latest arrival. ValueError if `running` is empty."""
    # TODO: max over (priority, arrival); raise ValueError on an empty input
    raise NotImplementedError("pick_victim")


def admit(waiting: list, budget: int, free_seq_slots: int, enable_chunked_prefill: bool,
          num_cached: Callable, try_allocate: Callable) -> list[tuple]:
    """Admit sequences from the front of `waiting` (already sorted) for this step.

    For each sequence in order: stop if no sequence slot or no token budget is left; the tokens
    it still needs are seq.num_tokens - num_cached(seq) (the prefix cache already holds the first
    num_cached(seq) tokens: charge the budget only for the rest); compute
    n = chunk_tokens(those tokens, budget, enable_chunked_prefill); stop if n == 0; stop
    if try_allocate(seq) returns False (it reserves the KV blocks when it returns True).
    Otherwise record (seq, n), spend n tokens of the budget and one slot.
    Never skip a sequence that does not fit to admit a later one (that would starve it).
    Returns the list of (seq, n).
    """
    # TODO: the loop described above; call try_allocate only for sequences you admit
    raise NotImplementedError("admit")
