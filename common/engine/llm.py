"""`LLM`: the offline engine with vLLM's API (`from common.engine import LLM, SamplingParams`).

Settings: `LLM(model, **overrides)` builds an `EngineConfig` (common/engine/config.py), the one
place engine defaults live. Each `step()` reads top to bottom:
  scheduler.schedule()         which sequences run, how many tokens each (decodes, then chunked
                               prefills under the token budget, charged after prefix-cache hits)
  kv_store.copy_blocks()       copy-on-write copies the schedule asked for
  runner.prepare / execute     the ragged batch, one forward over the paged KV cache
  scheduler.update_computed()  K/V now cached; full blocks enter the prefix cache
  run_sampler()                penalties, sampling, raw logprobs
  scheduler.postprocess()      append tokens, check stops, finish and free
Overlap scheduling (engine/overlap.py) calls the same pieces with one step of lookahead.
K/V live in the store `kv_cache_dtype` picks from `common.engine.kv_stores.KV_STORES`: head-major
blocks (kv heads outermost, which decode attention gathers without a copy) in the model dtype, or
their INT8 twin with kv_cache_dtype="int8".
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Sequence as Seq

import torch
from tqdm.auto import tqdm

from ..device import parse_dtype, pick_device, synchronize
from ..model.llama import Llama
from ..models import render_chat
from ..paged import BlockManager
from .config import EngineConfig
from .kv_stores import kv_store_class
from .overlap import OverlapLoop
from .runner import ModelRunner
from .sampler import SamplingBatch, run_sampler
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .sequence import RequestOutput, Sequence, Status, completion_of
from .stats import StepStats
from .stop import StopChecker


class LLM:
    """The offline engine with vLLM's `LLM.generate` API over our scheduler, block manager and model.

    定义于 第7章 §7.3
    """
    def __init__(self, model: str | Llama = "smollm2-135m", *, tokenizer: Any = None,
                 config: EngineConfig | None = None, **overrides: Any) -> None:
        """`overrides` are `EngineConfig` fields (block_size=8, kv_cache_dtype="int8", ...) applied on top
        of `config` (default: EngineConfig()); `llm.engine_config` is the result. kv_cache_dtype (vLLM's
        name): "auto" stores K/V in the model dtype; "int8" stores int8 codes with one fp16 scale per
        (token, kv head) (common.quant.kv_int8_paged), ~half of bf16's bytes. async_scheduling (vLLM's
        name): `generate` schedules step t+1 while the model runs step t (common.engine.overlap);
        outputs are the same, `step()` itself stays serial."""
        cfg = self.engine_config = EngineConfig.build(config, **overrides)
        if isinstance(model, Llama):   # used as given, never modified (unfused, fused or quantized)
            self.model, self.model_name = model, None
        else:   # a registry name: the serving layout (packed QKV / gate-up, packed bf16 weights; common.model.fused)
            from ..models import load_model
            self.model = load_model(model, parse_dtype(cfg.dtype), cfg.device, fused=True)
            self.model_name = model
        self.tokenizer = tokenizer
        if self.tokenizer is None and self.model_name is not None:
            from ..models import load_tokenizer
            self.tokenizer = load_tokenizer(self.model_name)
        self.config = self.model.config
        self.device = pick_device(self.model.device)
        self.dtype = self.model.dtype
        self.max_model_len = cfg.max_model_len or self.config.max_position_embeddings
        self.block_size = cfg.block_size
        self.async_scheduling = cfg.async_scheduling   # may be switched between generate() calls
        store_cls = kv_store_class(cfg.kv_cache_dtype)
        num_blocks = cfg.num_blocks
        if num_blocks is None:
            num_blocks = store_cls.num_blocks_for_memory(self.config, cfg.kv_cache_bytes(self.device),
                                                         cfg.block_size, self.dtype)
        if num_blocks < 1:
            raise ValueError(f"the KV cache must hold at least one block, got num_blocks={num_blocks}")
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.kv_store = store_cls(self.config, num_blocks, cfg.block_size, self.dtype, self.device)
        self.eos_token_id = self.config.eos_token_id
        self.scheduler = Scheduler(self.block_manager, cfg,
                                   StopChecker(self.eos_token_id, self.max_model_len, self.tokenizer))
        self.runner = ModelRunner(self.model, self.kv_store, self.block_manager.block_table)
        self.stats: list[StepStats] = []
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()
        self._requests: dict[str, tuple[Any, list[int], list[Sequence]]] = {}

    # ---- inputs -----------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.block_manager.num_blocks

    def _token_ids(self, prompt: Any) -> tuple[str | None, list[int]]:
        """Accepts a string, a token-id list, {"prompt_token_ids": [...]}, {"prompt": "..."},
        or chat messages [{"role": ..., "content": ...}, ...]."""
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if isinstance(prompt, dict) and "prompt" in prompt:
            prompt = prompt["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            self._need_tokenizer("chat messages")
            return render_chat(self.tokenizer, prompt)
        if isinstance(prompt, str):
            self._need_tokenizer("text prompts")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple, torch.Tensor)):
            return None, [int(t) for t in prompt]
        raise ValueError(f"unsupported prompt of type {type(prompt).__name__}")

    def _need_tokenizer(self, what: str) -> None:
        if self.tokenizer is None:
            raise ValueError(f"{what} need a tokenizer; pass tokenizer=... or token-id lists")

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ValueError("empty prompt")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit the context of {self.max_model_len} "
                             f"(at least one token must be generated)")
        total = min(len(ids) + (params.max_tokens or self.max_model_len), self.max_model_len)
        if self.block_manager.blocks_needed(total) > self.num_blocks:
            raise ValueError(f"prompt + max_tokens = {total} tokens need {self.block_manager.blocks_needed(total)} "
                             f"KV blocks but the whole pool has {self.num_blocks}; raise num_blocks/kv_cache_memory")
        cfg = self.engine_config
        if not cfg.enable_chunked_prefill and total > cfg.max_num_batched_tokens:
            raise ValueError(f"without chunked prefill a sequence of up to {total} tokens must fit "
                             f"max_num_batched_tokens={cfg.max_num_batched_tokens}")

    def add_request(self, prompt: Any, params: SamplingParams | None = None, priority: int = 0,
                    request_id: str | None = None, arrival: float | None = None) -> str:
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        text, ids = self._token_ids(prompt)
        self._validate(ids, params)
        request_id = request_id or str(next(self._request_ids))
        arrival = time.perf_counter() if arrival is None else arrival
        seqs = []
        for i in range(params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator().manual_seed(params.seed + i)
            seq = Sequence(next(self._seq_ids), request_id, i, list(ids), params, priority, arrival, generator=gen)
            self.scheduler.add(seq)
            seqs.append(seq)
        self._requests[request_id] = (text, ids, seqs)
        return request_id

    def sequences(self, request_id: str) -> list[Sequence]:
        """The live sequences of a request (its n completions), e.g. to watch them step by step."""
        try:
            return list(self._requests[request_id][2])
        except KeyError:
            raise ValueError(f"unknown or already returned request {request_id!r}") from None

    def abort(self, request_id: str) -> bool:
        """Cancel a request (e.g. its client disconnected): its unfinished sequences leave the
        waiting/running queues and free their KV blocks. Returns False for an unknown request."""
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return False
        for seq in entry[2]:
            if seq.status is not Status.FINISHED:
                self.scheduler.abort(seq)
        return True

    # ---- the loop ---------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One iteration; returns the sequences that finished in it."""
        start = time.perf_counter()
        out = self.scheduler.schedule()
        if not out.scheduled:
            raise RuntimeError("the scheduler found nothing to run although requests are waiting "
                               f"({len(self.scheduler.waiting)} waiting, {self.block_manager.num_free_blocks} "
                               "free blocks)")
        self.kv_store.copy_blocks(out.copies)
        t1 = time.perf_counter()
        meta = self.runner.prepare(out.scheduled, out.num_decode)
        t2 = time.perf_counter()
        logits = self.runner.execute(meta)
        synchronize(self.device)   # on CUDA the forward is asynchronous: charge it to forward_s, not sample_s
        t3 = time.perf_counter()
        self.scheduler.update_computed(out)
        finished = []
        if meta.sample_seqs:
            sampled = run_sampler(logits, self.sampling_batch(meta.sample_seqs))
            finished = self.scheduler.postprocess(meta.sample_seqs, sampled.token_ids, sampled.logprobs)
        self.record_step(out, start, len(meta.sample_seqs), prepare_s=t2 - t1, forward_s=t3 - t2,
                         sample_s=time.perf_counter() - t3)
        return finished

    def sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        """The sampling settings of the sequences that sample this step, as tensors."""
        return SamplingBatch.from_sequences(seqs, self.eos_token_id, self.config.vocab_size, self.device)

    def record_step(self, out: SchedulerOutput, start: float, num_sampled: int, *, prepare_s: float,
                    forward_s: float, sample_s: float) -> None:
        """Append the step's `StepStats` (the serial loop and the overlap loop both call this)."""
        prefill = out.scheduled[out.num_decode:]
        self.stats.append(StepStats(
            step=len(self.stats), start=start, num_decode=out.num_decode, num_prefill=len(prefill),
            num_prefill_tokens=sum(n for _, n in prefill), num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting), kv_usage=self.block_manager.usage,
            num_preempted=len(out.preempted), num_sampled=num_sampled, schedule_s=out.schedule_s,
            prepare_s=prepare_s, forward_s=forward_s, sample_s=sample_s,
            seq_ids=tuple(s.seq_id for s, _ in out.scheduled)))

    def reset_stats(self) -> None:
        """Forget the step statistics and the prefix-cache counters (e.g. after a warm-up request)."""
        self.stats.clear()
        self.block_manager.reset_stats()

    def _finalize(self, request_id: str) -> RequestOutput:
        text, ids, seqs = self._requests.pop(request_id)
        for seq in seqs:
            if self.tokenizer is not None and seq.stop_reason not in seq.params.stop_list:
                seq.text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=seq.params.skip_special_tokens)
        return RequestOutput(request_id, text, ids, [completion_of(s) for s in seqs],
                             all(s.status is Status.FINISHED for s in seqs), seqs[0].num_cached, seqs[0].priority)

    def generate(self, prompts: Any, sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 priority: Seq[int] | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and
                                                (isinstance(prompts[0], int) or isinstance(prompts[0], dict)
                                                 and "role" in prompts[0])):
            prompts = [prompts]
        prompts = list(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        prios = list(priority) if priority is not None else [0] * len(prompts)
        if len(params) != len(prompts) or len(prios) != len(prompts):
            raise ValueError("sampling_params and priority lists must match the number of prompts")
        if any(p != 0 for p in prios) and self.scheduler.policy != "priority":
            raise ValueError("priority given but scheduling_policy is not 'priority'")
        now = time.perf_counter()
        ids = [self.add_request(p, sp, pr, arrival=now) for p, sp, pr in zip(prompts, params, prios)]
        bar = tqdm(total=len(ids), desc="requests", disable=not use_tqdm)
        done: set[str] = set()

        def on_finished(seq: Sequence) -> None:
            if seq.request_id not in done and all(s.status is Status.FINISHED
                                                  for s in self._requests[seq.request_id][2]):
                done.add(seq.request_id)
                bar.update(1)

        if self.async_scheduling:
            OverlapLoop(self).run(on_finished)
        while self.has_unfinished_requests():
            for seq in self.step():
                on_finished(seq)
        bar.close()
        return [self._finalize(i) for i in ids]

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None,
             use_tqdm: bool = True) -> list[RequestOutput]:
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        return self.generate(convs, sampling_params, use_tqdm=use_tqdm)
