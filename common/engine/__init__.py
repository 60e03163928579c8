"""Chapter 7's engine: continuous batching with chunked prefill, preemption by recompute and
scheduling policies over the paged KV cache of chapter 6. The API mirrors vLLM's:

    from common.engine import LLM, SamplingParams
    llm = LLM("smollm2-135m", dtype="bfloat16")
    outs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))

Every engine setting and its default is a field of `EngineConfig` (keyword overrides of `LLM`).
"""
from .config import EngineConfig
from .llm import LLM
from .sampling_params import SamplingParams
from .scheduler import POLICIES, Scheduler
from .sequence import CompletionOutput, RequestMetrics, RequestOutput
from .stats import StepStats

__all__ = ["EngineConfig", "LLM", "SamplingParams", "Scheduler", "POLICIES", "CompletionOutput", "RequestMetrics",
           "RequestOutput", "StepStats"]
