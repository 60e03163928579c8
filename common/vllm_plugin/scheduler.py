"""Shortest-prompt-first (SPF) for vLLM V1 (§5.11.7, exercise 5.5): the waiting queue pops the shortest prompt.

Why: with FCFS, short requests that arrive behind long prompts wait for those prefills (head-of-line blocking);
SPF serves them first, which lowers mean TTFT (the classic shortest-job-first argument) at the cost of the long
requests' TTFT. Ties keep arrival order. Plug with `LLM(..., scheduler_cls=SCHEDULER_CLS)` or
`vllm serve --scheduler-cls common.vllm_plugin.scheduler.ShortestPromptFirstScheduler`
(a dotted name: vLLM resolves it with rsplit('.'), unlike logits processors' 'module:Class').
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import RequestQueue, SchedulingPolicy
from vllm.v1.request import Request


class ShortestPromptFirstQueue(RequestQueue):
    """Heap keyed by (prompt length, arrival time, insertion order).

    定义于 第5章 §5.11.7
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add_request(self, request: Request) -> None:
        key = (request.num_prompt_tokens, request.arrival_time, next(self._counter))
        heapq.heappush(self._heap, (*key, request))

    def pop_request(self) -> Request:
        if not self._heap:
            raise IndexError("pop from an empty shortest-prompt-first queue")
        return heapq.heappop(self._heap)[-1]

    def peek_request(self) -> Request:
        if not self._heap:
            raise IndexError("peek at an empty shortest-prompt-first queue")
        return self._heap[0][-1]

    def prepend_request(self, request: Request) -> None:
        """A heap has no front: a preempted or skipped request goes back to its place by length."""
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: Request) -> None:
        self.remove_requests([request])

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = {id(r) for r in requests}
        self._heap = [entry for entry in self._heap if id(entry[-1]) not in gone]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[-1] for entry in sorted(self._heap, key=lambda entry: entry[:3]))


class ShortestPromptFirstScheduler(AsyncScheduler):
    """vLLM's default V1 scheduler (AsyncScheduler: token budget, chunked prefill, preemption, async scheduling
    unchanged) with SPF waiting queues; subclassing the sync `Scheduler` would lose async scheduling.

    定义于 第5章 §5.11.7
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.policy != SchedulingPolicy.FCFS:
            raise ValueError(f"ShortestPromptFirstScheduler replaces the FCFS queue; got policy {self.policy.value!r}")
        self.waiting = ShortestPromptFirstQueue()
        self.kv_holding_waiting = ShortestPromptFirstQueue()
