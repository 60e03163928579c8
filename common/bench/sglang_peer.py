"""`sglang` as an engine of `python -m common.bench offline` (and the server to point `serve` at).

On CUDA: the workload through `sglang.Engine` in SGLang's own environment (common.peers.sglang_server), greedy,
EOS ignored, plus the batch-1 decode latency jobs, with one engine start. Anywhere else the row is still in the
table: {"engine": "sglang", "unavailable": "needs CUDA ..."} (no timing), never a silently missing engine.
"""
from __future__ import annotations

from .metrics import summarize
from .workload import Workload

ENGINE = "sglang"


def unavailable_row(reason: str) -> dict:
    """A row that says why SGLang did not run; "error" keeps it out of the speed comparisons and the figure.

    定义于 第10章 §10.5.5
    """
    return {"engine": ENGINE, "unavailable": reason, "error": f"not run here: {reason}"}


def run_sglang_peer(workload: Workload, model: str, dtype: str, b1_prompt: list[int], b1_new_tokens: int) -> dict:
    """The same jobs as the vLLM peer (warm-up, workload, batch-1 short/long) through sglang.Engine.

    定义于 第10章 §10.5.5
    """
    from ..models import hf_model_dir
    from ..peers.sglang_server import run_sglang_offline, unavailable_reason
    from ..peers.vllm_runner import CUDA_PEER_MEMORY_FRACTION

    reason = unavailable_reason()
    if reason:
        return unavailable_row(reason)
    base = {"temperature": 0.0, "ignore_eos": True}
    spec = {"model_path": str(hf_model_dir(model)),
            "engine": {"dtype": dtype, "context_length": 2048, "random_seed": 0, "log_level": "error",
                       "mem_fraction_static": CUDA_PEER_MEMORY_FRACTION},
            "jobs": [{"name": "warmup", "input_ids": [workload.prompts[0][:32]],
                      "sampling": {**base, "max_new_tokens": 4}},
                     {"name": "workload", "input_ids": workload.prompts, "sampling": base,
                      "sampling_per_prompt": [{**base, "max_new_tokens": n} for n in workload.output_lens]},
                     {"name": "b1_short", "input_ids": [b1_prompt], "sampling": {**base, "max_new_tokens": 1}},
                     {"name": "b1_long", "input_ids": [b1_prompt],
                      "sampling": {**base, "max_new_tokens": b1_new_tokens + 1}}]}
    raw = run_sglang_offline(spec)
    if "error" in raw:
        return {"engine": ENGINE, "error": raw["error"]}
    jobs = {j["name"]: j for j in raw["jobs"]}
    main = jobs["workload"]
    b1 = (jobs["b1_long"]["elapsed_s"] - jobs["b1_short"]["elapsed_s"]) / b1_new_tokens * 1e3
    return {"engine": ENGINE, "version": raw.get("version"), "startup_s": raw.get("startup_s"),
            **summarize(workload, main["elapsed_s"]), "outputs": [r["token_ids"] for r in main["outputs"]],
            "decode_latency_ms_b1": b1}
