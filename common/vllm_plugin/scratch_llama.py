"""The repo's from-scratch Llama (`common.model.llama.Llama`) served by vLLM as an out-of-tree model (§5.11.7).

Our Llama takes any object with the `AttentionCache` protocol (`attend(layer_idx, q, k, v)`); here that object
hands each layer's rotated q/k/v to vLLM's paged `Attention` layer, so vLLM owns the KV cache, the block tables
and the attention kernel, while embedding, RoPE, GQA projections, SwiGLU, RMSNorm and the LM head are ours.
Registered by `common.vllm_plugin.register` as `ScratchLlamaForCausalLM`; select it with
`hf_overrides={"architectures": ["ScratchLlamaForCausalLM"]}`.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention

from common.model.llama import Llama, LlamaConfig


class VLLMAttentionCache:
    """`common.model.llama.AttentionCache` on top of vLLM: vLLM's flattened batch [tokens] is our batch of one.

    定义于 第5章 §5.11.7
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self.seq_len = 0  # unused: vLLM always passes positions

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        _, num_heads, tokens, head_dim = q.shape
        flat = [t[0].transpose(0, 1).reshape(tokens, -1) for t in (q, k, v)]  # [1, H, T, D] -> [T, H*D]
        out = self.layers[layer_idx](*flat)
        return out.view(tokens, num_heads, head_dim).transpose(0, 1).unsqueeze(0)

    def advance(self, num_tokens: int) -> None:
        """vLLM tracks sequence lengths itself (attention metadata)."""


class ScratchLlamaForCausalLM(nn.Module):
    """vLLM's model interface (`vllm_config` init, `embed_input_ids`, `forward`, `compute_logits`, `load_weights`)
    around `common.model.llama.Llama`.

    定义于 第5章 §5.11.7
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = LlamaConfig.from_dict(vllm_config.model_config.hf_config.to_dict())
        self.model = Llama(config)
        self.attn = nn.ModuleList(
            Attention(config.num_attention_heads, config.head_dim, config.head_dim ** -0.5,
                      num_kv_heads=config.num_key_value_heads, cache_config=vllm_config.cache_config,
                      prefix=f"{prefix}.attn.{i}" if prefix else f"attn.{i}")
            for i in range(config.num_hidden_layers))
        self.cache = VLLMAttentionCache(self.attn)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is not None:
            raise NotImplementedError("ScratchLlamaForCausalLM takes token ids, not embeddings")
        return self.model.hidden_states(input_ids.unsqueeze(0), positions, self.cache)[0]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Hugging Face names ("model.layers.0.self_attn.q_proj.weight") are ours under `self.model`."""
        params = dict(self.model.named_parameters())
        loaded = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if name not in params:
                if name == "lm_head.weight" and self.model.config.tie_word_embeddings:
                    continue
                raise KeyError(f"checkpoint tensor {name!r} has no place in common.model.llama.Llama")
            with torch.no_grad():
                params[name].copy_(tensor)
            loaded.add(f"model.{name}")
        missing = {f"model.{n}" for n in params} - loaded
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)}")
        return loaded
