"""Model registry and loaders used by every chapter, lab and test.

    hf_model_dir(name)                      -> Path of the converted Hugging Face folder
    load_tokenizer(name)                    -> the model's tokenizer (with its chat template)
    load_model(name, dtype, device, fused)  -> the from-scratch `common.model.llama.Llama`
    load_hf_model(name, dtype, device)      -> transformers' model, the reference
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..device import parse_dtype, pick_device
from ..model.llama import Llama, LlamaConfig
from .convert import ModelNotInstalledError
from .registry import MODELS, get_spec, hf_model_dir, is_cached

__all__ = ["MODELS", "ModelNotInstalledError", "chat_prompt_ids", "get_spec", "hf_model_dir", "is_cached",
           "load_config", "load_hf_model", "load_model", "load_tokenizer", "render_chat"]


def load_config(name: str) -> LlamaConfig:
    """The LlamaConfig of a registered model, read from its cached Hugging Face folder.

    本书无对应章节（工具）
    """
    return LlamaConfig.from_pretrained(hf_model_dir(name))


@lru_cache(maxsize=None)
def load_tokenizer(name: str):
    """The Hugging Face tokenizer of a registered model, from its cached folder.

    本书无对应章节（工具）
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_model_dir(name))


def load_model(name: str, dtype: torch.dtype | str = torch.float32, device: str | torch.device | None = None,
               fused: bool = False) -> Llama:
    """The from-scratch model with the registry's weights, in eval mode. fused=True: the serving layout
    (packed QKV and gate/up, bf16 weights packed for common.model.packed_gemm on CPU; common.model.fused), what
    `common.engine.LLM` loads.

    本书无对应章节（工具）
    """
    return Llama.from_pretrained(hf_model_dir(name), parse_dtype(dtype), pick_device(device), fused=fused)


def load_hf_model(name: str, dtype: torch.dtype | str = torch.float32, device: str | torch.device | None = None):
    """transformers' LlamaForCausalLM on the same folder: the reference our model is checked against.

    本书无对应章节（工具）
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_model_dir(name), dtype=parse_dtype(dtype),
                                                 attn_implementation="sdpa")
    return model.to(pick_device(device)).eval()


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[int]]:
    """Chat messages formatted by the tokenizer's chat template, ready for the assistant's reply: the text
    and its token ids. The one place the repo applies a chat template (engine, server and chapters call it);
    no special tokens are added on encoding because the template already wrote them.

    本书无对应章节（工具）
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, tokenizer.encode(text, add_special_tokens=False)


def chat_prompt_ids(name: str, user_message: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat, formatted by the model's chat template, ready for the reply.

    本书无对应章节（工具）
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_message}]
    return render_chat(load_tokenizer(name), messages)[1]
