"""A Llama-family decoder written from scratch: embedding → N × (RMSNorm, GQA attention with RoPE,
RMSNorm, SwiGLU) → RMSNorm → LM head (tied to the embedding for SmolLM2).

Module names follow Hugging Face's checkpoint names, so a converted folder's safetensors
load as they are. Attention over a KV cache is delegated to the cache object (see
`AttentionCache`), so the same model runs with no cache, a contiguous cache (chapter 5) or a
paged cache inside the engine (chapters 6–7).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from torch import nn

from . import cpu_layer, cpu_ops
from .attention import sdpa
from .fused import PrepackedLinear, pack_state_dict, prepack_linears
from .layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope


class ContextLengthError(ValueError):
    """A sequence would run past the model's maximum position.

    定义于 第6章 §6.1
    """


@dataclass(frozen=True)
class LlamaConfig:
    """The Llama hyper-parameters the model is built from (Hugging Face config names).

    定义于 第6章 §6.1
    """
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @classmethod
    def from_dict(cls, raw: dict) -> "LlamaConfig":
        """Read a Hugging Face config.json (transformers 4 or 5 layout)."""
        raw = dict(raw)
        raw.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
        raw.setdefault("num_key_value_heads", raw["num_attention_heads"])
        if "rope_theta" not in raw:  # transformers 5 nests it in rope_parameters
            raw["rope_theta"] = (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        scaling = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
        if scaling.get("rope_type", "default") not in ("default", None):
            raise NotImplementedError(f"RoPE scaling {scaling['rope_type']!r} is not implemented")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LlamaConfig":
        return cls.from_dict(json.loads((Path(folder) / "config.json").read_text()))


class AttentionCache(Protocol):
    """What the model needs from a KV cache: attend over stored keys after adding new ones.

    定义于 第6章 §6.1
    """

    seq_len: int

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (new tokens) for this layer, return attention of q over all keys."""

    def advance(self, num_tokens: int) -> None:
        """Called once per forward after every layer has stored its keys."""


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, using whatever KV cache the caller passes.

    fused=True (the serving layout, common.model.fused) holds q, k and v as one packed `qkv_proj` (one matmul,
    split after) with prepacked linears; the default is the teaching layout.

    定义于 第6章 §6.1
    """
    def __init__(self, config: LlamaConfig, layer_idx: int, fused: bool = False) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.fused = fused
        hidden, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if fused:
            self.qkv_sizes = [q_size, kv_size, kv_size]
            self.qkv_proj = PrepackedLinear(hidden, q_size + 2 * kv_size)
            self.o_proj = PrepackedLinear(q_size, hidden)
        else:
            self.q_proj = nn.Linear(hidden, q_size, bias=False)
            self.k_proj = nn.Linear(hidden, kv_size, bias=False)
            self.v_proj = nn.Linear(hidden, kv_size, bias=False)
            self.o_proj = nn.Linear(q_size, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: AttentionCache | None) -> torch.Tensor:
        if self.fused:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = self.split_heads(q, k, v)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(self.attend(q, k, v, cache))

    def split_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[batch, seq, heads * head_dim] projections -> [batch, heads, seq, head_dim] views."""
        batch, seq, _ = q.shape
        return (q.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2),
                k.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2),
                v.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cache: AttentionCache | None) -> torch.Tensor:
        """Causal attention of rotated q over k, v (and the cache's earlier keys): [batch, seq, heads * head_dim]."""
        batch, _, seq, _ = q.shape
        out = sdpa(q, k, v, causal=True) if cache is None else cache.attend(self.layer_idx, q, k, v)
        return out.transpose(1, 2).reshape(batch, seq, -1)


class DecoderLayer(nn.Module):
    """One decoder layer: RMSNorm, attention, residual, RMSNorm, SwiGLU MLP, residual.

    The serving layout on CPU bf16, with its four linears packed (`packed_linears`), runs the layer as two C++ calls
    around the attention (`forward_cpu`, common.model.cpu_layer): the same kernels, without Python's cost per op.

    定义于 第6章 §6.1
    """
    def __init__(self, config: LlamaConfig, layer_idx: int, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx, fused)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, fused)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: AttentionCache | None) -> torch.Tensor:
        if self.fused and cos.dim() == 2 and cpu_ops.use_cpu_ops(x) and cpu_layer.cpu_layer_available():
            packed = self.packed_linears()
            if packed is not None:
                return self.forward_cpu(x, cos, sin, cache, packed)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def packed_linears(self) -> list[torch.Tensor] | None:
        """The packed weights of (qkv, o, gate/up, down) as they are now, or None if any linear is not packed
        (fp32, GPU, or replaced, e.g. by a quantized linear)."""
        # submodules read from _modules: nn.Module.__getattr__ costs ~0.5 us, and a step makes hundreds of reads
        attn, mlp = self._modules["self_attn"]._modules, self._modules["mlp"]._modules
        packed = []
        for linear in (attn["qkv_proj"], attn["o_proj"], mlp["gate_up_proj"], mlp["down_proj"]):
            weight = linear.current_packed() if isinstance(linear, PrepackedLinear) else None
            if weight is None:
                return None
            packed.append(weight)
        return packed

    def forward_cpu(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: AttentionCache | None,
                    packed: list[torch.Tensor]) -> torch.Tensor:
        """The same layer as two C++ calls around the attention (cos/sin [seq, head_dim], shared by the batch)."""
        modules = self._modules   # not self.<name>: see packed_linears
        attn, norm1, norm2 = modules["self_attn"], modules["input_layernorm"], modules["post_attention_layernorm"]
        qkv_weight, o_weight, gate_up_weight, down_weight = packed
        qkv = cpu_layer.attention_input(x, norm1._parameters["weight"], norm1.eps, qkv_weight, cos, sin,
                                        attn.num_heads + attn.num_kv_heads, attn.head_dim)
        out = attn.attend(*attn.split_heads(*qkv.split(attn.qkv_sizes, dim=-1)), cache)
        return cpu_layer.attention_output_and_mlp(out, x, o_weight, norm2._parameters["weight"], norm2.eps,
                                                  gate_up_weight, down_weight)


class Llama(nn.Module):
    """The from-scratch Llama decoder; loads Hugging Face weights and matches transformers' logits.

    fused=False (default): the teaching layout, one nn.Linear per checkpoint tensor (q_proj, k_proj, ...).
    fused=True: the serving layout (common.model.fused): packed qkv_proj and gate_up_proj, every linear
    packed for the repo's bf16 GEMM on CPU once the weights are loaded (common.model.packed_gemm), each layer two
    C++ calls around its attention there (common.model.cpu_layer). Same function, fewer and faster matmuls.

    定义于 第6章 §6.1
    """
    def __init__(self, config: LlamaConfig, fused: bool = False) -> None:
        super().__init__()
        self.config = config
        self.fused = fused
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, fused) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        linear = PrepackedLinear if fused else nn.Linear
        self.lm_head = linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                      cache: AttentionCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [batch, seq, hidden].

        positions: [batch, seq] or [seq] absolute positions; by default they continue the cache.
        """
        seq = input_ids.shape[-1]
        if positions is None:
            start = cache.seq_len if cache is not None else 0
            if start + seq > self.config.max_position_embeddings:
                raise ContextLengthError(
                    f"{start + seq} tokens exceed the model's context of "
                    f"{self.config.max_position_embeddings} positions")
            positions = torch.arange(start, start + seq, device=input_ids.device)
        cos, sin = self.rotary(positions, self.dtype)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        if cache is not None:
            cache.advance(seq)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: AttentionCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits [batch, seq, vocab] (or [batch, 1, vocab] with last_only, which skips the
        LM head on all but the last position: most of prefill's LM-head cost)."""
        h = self.hidden_states(input_ids, positions, cache)
        return self.logits(h[:, -1:] if last_only else h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head."""
        return self.lm_head(hidden)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", fused: bool = False) -> "Llama":
        """Load a Hugging Face folder (config.json + *.safetensors) into the from-scratch model.
        fused=True: the serving layout (q/k/v and gate/up tensors packed on load, see common.model.fused)."""
        folder = Path(folder)
        config = LlamaConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = cls(config, fused=fused)
        state: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            for name, tensor in load_file(file, device=str(device)).items():
                state[name.removeprefix("model.")] = tensor.to(dtype)
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        model.load_state_dict(pack_state_dict(state) if fused else state, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta).to(device)
        return prepack_linears(model.eval()) if fused else model.eval()
