"""Overlap scheduling (vLLM's `async_scheduling`, SGLang's overlap scheduler): schedule and build
step t+1 on the CPU while the model runs step t.

The model step (forward + sampling) runs in one worker thread; PyTorch releases the GIL inside
its kernels, so the main thread meanwhile schedules the next step and builds its tensors. Step
t+1 is scheduled before step t's tokens exist, so every sequence that samples in step t gets a
placeholder token (-1) appended when step t is launched; the scheduler then sees it as a decode
needing one more token, exactly as it will after sampling. When step t's tokens arrive they
replace the placeholders, both in the sequences and in the already-built input ids of step t+1.

What the lookahead costs: a sequence that stops at step t was already scheduled in step t+1;
its row there is computed and thrown away (and its KV slot written after its blocks were freed:
harmless, because a freed block is only rewritten by its next owner in a later step, and a
prefix-cache-hashed block never contains a not-yet-computed position). Everything else (block
allocation, preemption, prefix caching, copy-on-write) is the serial engine's code, in the same
order, so greedy outputs are identical to `LLM.step()` (tests/test_engine_overlap.py).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .runner import BatchMetadata
from .sampler import SamplerOutput, SamplingBatch, run_sampler
from .scheduler import SchedulerOutput
from .sequence import Sequence, Status

PLACEHOLDER = -1


@dataclass
class InFlight:
    """A step launched but not finished: what the CPU must resolve when its result arrives.

    定义于 第7章 §7.4.4
    """
    out: SchedulerOutput
    meta: BatchMetadata
    future: Future
    pending: list[Sequence]          # sequences whose output ends with this step's placeholder
    launched: float
    prepare_s: float


class OverlapLoop:
    """Runs an `LLM`'s requests to completion with one step of lookahead (see module doc).

    定义于 第7章 §7.4.4
    """

    def __init__(self, llm) -> None:
        self.llm = llm
        threads = torch.get_num_threads()   # a new thread would not inherit torch.set_num_threads
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-step",
                                       initializer=torch.set_num_threads, initargs=(threads,))

    @torch.inference_mode()
    def _model_step(self, meta: BatchMetadata, batch: SamplingBatch | None) -> tuple[SamplerOutput, float]:
        t0 = time.perf_counter()
        logits = self.llm.runner.execute(meta)
        sampled = run_sampler(logits, batch) if batch is not None else SamplerOutput([], None)
        return sampled, time.perf_counter() - t0

    def _schedule_and_prepare(self) -> tuple[SchedulerOutput, BatchMetadata, float] | None:
        if not self.llm.scheduler.has_unfinished():
            return None
        out = self.llm.scheduler.schedule()
        if not out.scheduled:
            return None
        t0 = time.perf_counter()
        meta = self.llm.runner.prepare(out.scheduled, out.num_decode)
        return out, meta, time.perf_counter() - t0

    def _launch(self, out: SchedulerOutput, meta: BatchMetadata, prepare_s: float) -> InFlight:
        """Start the model on a prepared step, then do the step's bookkeeping that needs no tokens."""
        llm = self.llm
        llm.kv_store.copy_blocks(out.copies)   # copy-on-write: after the previous step's forward, before this one
        if (meta.input_ids == PLACEHOLDER).any():
            raise RuntimeError("a placeholder token reached the model: overlap bookkeeping is broken")
        batch = llm.sampling_batch(meta.sample_seqs) if meta.sample_seqs else None
        future = self.pool.submit(self._model_step, meta, batch)
        llm.scheduler.update_computed(out)
        pending = [s for s in meta.sample_seqs if s.status is Status.RUNNING]
        for seq in pending:
            seq.output_ids.append(PLACEHOLDER)
        return InFlight(out, meta, future, pending, time.perf_counter(), prepare_s)

    def _commit(self, step: InFlight, following: tuple[SchedulerOutput, BatchMetadata, float] | None
                ) -> list[Sequence]:
        """Step t's tokens: replace the placeholders (in the sequences, through the scheduler's own
        postprocess, and in step t+1's inputs)."""
        sampled, forward_s = step.future.result()
        t0 = time.perf_counter()
        row = {seq: i for i, seq in enumerate(step.meta.sample_seqs)}
        rows = [row[seq] for seq in step.pending]
        for seq in step.pending:
            seq.output_ids.pop()                   # the placeholder; postprocess appends the real token
        finished = self.llm.scheduler.postprocess(
            step.pending, [sampled.token_ids[i] for i in rows],
            None if sampled.logprobs is None else [sampled.logprobs[i] for i in rows])
        if following is not None:   # decode rows come first, one token each, in scheduled order
            out, meta, _ = following
            ids = meta.input_ids[0, :meta.num_decode]
            for r in (ids == PLACEHOLDER).nonzero().flatten().tolist():
                ids[r] = out.scheduled[r][0].output_ids[-1]
        self.llm.record_step(step.out, step.launched, len(sampled.token_ids), prepare_s=step.prepare_s,
                             forward_s=forward_s, sample_s=time.perf_counter() - t0)
        return finished

    def run(self, on_finished=lambda seq: None) -> None:
        """Step until no request is left; `on_finished(seq)` for every sequence that stops."""
        inflight: InFlight | None = None
        try:
            while True:
                nxt = self._schedule_and_prepare()     # runs while `inflight`'s forward does
                if inflight is not None:
                    for seq in self._commit(inflight, nxt):
                        on_finished(seq)
                elif nxt is None:
                    if self.llm.has_unfinished_requests():
                        raise RuntimeError("the scheduler found nothing to run although requests are waiting")
                    return
                inflight = self._launch(*nxt) if nxt is not None else None
        finally:
            self.pool.shutdown(wait=True)
