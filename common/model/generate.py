"""Plain autoregressive generation with the from-scratch model: the baseline every later
optimisation (batching, paging, speculation) is compared with."""
from __future__ import annotations

from typing import Sequence

import torch

from .kv_cache import KVCache
from .llama import ContextLengthError, Llama


def _check_context(model: Llama, prompt_len: int, max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context = model.config.max_position_embeddings
    if prompt_len + max_new_tokens > context:
        raise ContextLengthError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context of {context}; shorten the prompt or lower max_new_tokens")


@torch.inference_mode()
def greedy_generate(model: Llama, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, use_cache: bool = True) -> list[int]:
    """Greedy decoding of one prompt. Returns only the new tokens (eos included if produced).

    use_cache=False recomputes the whole sequence every step (the O(n²) baseline of chapter 5).

    定义于 第5章 §5.2
    """
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    _check_context(model, ids.shape[1], max_new_tokens)
    cache = KVCache(model.config, 1, ids.shape[1] + max_new_tokens, model.dtype, model.device) if use_cache else None
    new_tokens: list[int] = []
    step_input = ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache=cache, last_only=True)
        token = int(logits[0, -1].argmax())
        new_tokens.append(token)
        if token == eos_token_id:
            break
        next_id = torch.tensor([[token]], device=model.device)
        step_input = next_id if use_cache else torch.cat([step_input, next_id], dim=1)
    return new_tokens
