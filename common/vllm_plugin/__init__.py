"""A real vLLM plugin (§5.11.7; book exercises 5.5 and 10.5), packaged under the `vllm.general_plugins` entry point.

The book's `from vllm.plugin import VLLMPatch` does not exist in vLLM. The real mechanisms, all used here:
- `vllm.general_plugins` entry point (pyproject.toml) -> `register()`: vLLM calls it in EVERY process it
  starts (front end, engine core, workers), which is why a plugin is an installed distribution and not an
  import in the caller. `register()` adds `ScratchLlamaForCausalLM` (the repo's from-scratch `common.model.llama.Llama`,
  attention through vLLM's paged `Attention` layer) to vLLM's `ModelRegistry`; select it with
  `hf_overrides={"architectures": ["ScratchLlamaForCausalLM"]}`.
- `scheduler_cls="common.vllm_plugin.scheduler.ShortestPromptFirstScheduler"` (`--scheduler-cls`): a V1
  scheduler whose waiting queue is shortest-prompt-first instead of FCFS.
- `logits_processors=["common.vllm_plugin.banned_tokens:BannedTokensLogitsProcessor"]`: a V1 batch-level
  logits processor that bans the token ids a request passes in `SamplingParams(extra_args={"banned_token_ids": [...]})`.

Nothing here is imported by the rest of `common`; vLLM imports it.
"""
from __future__ import annotations

SCRATCH_ARCHITECTURE = "ScratchLlamaForCausalLM"
SCHEDULER_CLS = "common.vllm_plugin.scheduler.ShortestPromptFirstScheduler"  # dotted, not "module:Class"
BANNED_TOKENS_PROCESSOR = "common.vllm_plugin.banned_tokens:BannedTokensLogitsProcessor"


def register() -> None:
    """vLLM's general-plugin hook: may run several times per process, so it must be idempotent and cheap
    (the model class is registered lazily by its qualified name: nothing heavy is imported here).

    定义于 第5章 §5.11.7
    """
    from vllm import ModelRegistry

    if SCRATCH_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(SCRATCH_ARCHITECTURE, "common.vllm_plugin.scratch_llama:ScratchLlamaForCausalLM")
