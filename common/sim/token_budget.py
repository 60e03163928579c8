"""Replay a trace through the chapter-5 token-budget scheduler in steps, with no model: each request
records the step of its first token and of its last, so a whole trace runs in milliseconds.
"""
from __future__ import annotations

from typing import Sequence

from ..basics.token_budget import Request, Step, TokenBudgetScheduler


def simulate(requests: Sequence[Request], budget: int, max_steps: int = 100_000) -> list[Step]:
    """Run the schedule to completion (no model); the requests record their first/finish steps.

    定义于 第5章 §5.10
    """
    scheduler = TokenBudgetScheduler(requests, budget)
    steps = []
    while not scheduler.done():
        if scheduler.step_index >= max_steps:
            raise RuntimeError(f"trace not finished after {max_steps} steps")
        step = scheduler.schedule()
        scheduler.commit(step)
        steps.append(step)
    return steps
