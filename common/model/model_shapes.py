"""The shapes of real models, in one table that every calculator reads (chapter 3's memory budget,
chapter 5's KV formulas, chapter 6's concurrency, chapter 10's cost).

One row per model, named as the repo names models (lower case, like `common.models`'s "smollm2-135m").
Every size is the model's Hugging Face config.json (the repo id is in the row's comment); `params` is the
parameter count the model's page gives (3-4 significant digits; the tests check it against what the shapes
count). The SmolLM2 row is exact and checked against the checkpoint this repo loads (tests/test_model_shapes.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .kv_math import GIB, KIB, kv_bytes_per_token, mla_bytes_per_token

if TYPE_CHECKING:
    from .llama import LlamaConfig

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")


@dataclass(frozen=True)
class ModelShape:
    """What the memory and KV formulas need to know about a decoder-only model.

    The attention variant follows from the numbers: MLA when a latent is cached (kv_lora_rank > 0),
    else MHA (one KV head per query head), MQA (one KV head) or GQA (groups in between).

    定义于 第3章 §3.3
    """
    name: str
    params: float                 # total parameters
    layers: int
    hidden: int
    heads: int                    # query heads
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    kv_lora_rank: int = 0         # MLA: compressed latent size cached per layer
    rope_dim: int = 0             # MLA: decoupled RoPE key size cached per layer (qk_rope_head_dim)

    def __post_init__(self) -> None:
        sizes = dict(layers=self.layers, hidden=self.hidden, heads=self.heads, kv_heads=self.kv_heads,
                     head_dim=self.head_dim, intermediate=self.intermediate, vocab=self.vocab)
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad or not self.params > 0:
            raise ValueError(f"{self.name}: sizes and params must be positive integers, got {bad or self.params}")
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.name}: {self.heads} query heads are not a multiple of {self.kv_heads} KV heads")
        if (self.kv_lora_rank > 0) != (self.rope_dim > 0) or min(self.kv_lora_rank, self.rope_dim) < 0:
            raise ValueError(f"{self.name}: MLA needs both kv_lora_rank and rope_dim > 0, got "
                             f"{self.kv_lora_rank}, {self.rope_dim}")

    @property
    def attention(self) -> str:
        """mha | gqa | mqa | mla."""
        if self.kv_lora_rank:
            return "mla"
        if self.kv_heads == self.heads:
            return "mha"
        return "mqa" if self.kv_heads == 1 else "gqa"

    def bytes_per_token(self, bytes_per_value: float = 2) -> int | float:
        """KV-cache bytes one token costs over all layers: `kv_math.kv_bytes_per_token` with this model's
        KV heads, or MLA's latent + RoPE key per layer."""
        if self.attention == "mla":
            return mla_bytes_per_token(self.layers, self.kv_lora_rank, self.rope_dim, bytes_per_value)
        return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, bytes_per_value)

    def mha_bytes_per_token(self, bytes_per_value: float = 2) -> int | float:
        """The same model with one K and one V per query head: the baseline the variants shrink."""
        return kv_bytes_per_token(self.layers, self.heads, self.head_dim, bytes_per_value)

    def with_attention(self, attention: str) -> "ModelShape":
        """The same model with another attention variant: mha (kv_heads = heads), mqa (one KV head),
        gqa (this model's KV heads, no latent) or mla (only for a model that has a latent)."""
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        kv_heads = {"mha": self.heads, "mqa": 1}.get(attention, self.kv_heads)
        shape = self if attention == "mla" else replace(self, kv_heads=kv_heads, kv_lora_rank=0, rope_dim=0)
        if shape.attention != attention:
            raise ValueError(f"{self.name} ({self.attention}, {self.kv_heads} KV heads) has no {attention} form")
        return shape

    @classmethod
    def from_config(cls, name: str, config: "LlamaConfig", params: float | None = None) -> "ModelShape":
        """From our Llama config; params counted from the shapes when not given."""
        h, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h
        counted = L * per_layer + config.vocab_size * h * (1 if config.tie_word_embeddings else 2) + h
        return cls(name, params or counted, L, h, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim, i, config.vocab_size)


# name, params, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab[, kv_lora_rank, rope_dim]
MODEL_SHAPES: dict[str, ModelShape] = {m.name: m for m in [
    ModelShape("smollm2-135m", 134_515_008, 30, 576, 9, 3, 64, 1536, 49152),         # HuggingFaceTB/SmolLM2-135M
    ModelShape("llama-2-7b", 6.74e9, 32, 4096, 32, 32, 128, 11008, 32000),    # meta-llama/Llama-2-7b-hf
    ModelShape("llama-2-13b", 13.0e9, 40, 5120, 40, 40, 128, 13824, 32000),  # meta-llama/Llama-2-13b-hf
    ModelShape("llama-2-70b", 69.0e9, 80, 8192, 64, 8, 128, 28672, 32000),   # meta-llama/Llama-2-70b-hf
    ModelShape("llama-3-8b", 8.03e9, 32, 4096, 32, 8, 128, 14336, 128256),    # meta-llama/Meta-Llama-3-8B
    ModelShape("llama-3-70b", 70.6e9, 80, 8192, 64, 8, 128, 28672, 128256),  # meta-llama/Meta-Llama-3-70B
    ModelShape("llama-3.1-405b", 405.9e9, 126, 16384, 128, 8, 128, 53248, 128256),  # meta-llama/Llama-3.1-405B
    ModelShape("qwen2-7b", 7.62e9, 28, 3584, 28, 4, 128, 18944, 152064),      # Qwen/Qwen2-7B
    ModelShape("mistral-7b", 7.24e9, 32, 4096, 32, 8, 128, 14336, 32000),     # mistralai/Mistral-7B-v0.1
    # tiiuae/falcon-7b: multi_query (one KV head), head_dim 4544 / 71 = 64, a GELU MLP of 4 x hidden; params
    # counted from these shapes with the tied word embedding once
    ModelShape("falcon-7b", 6.92e9, 32, 4544, 71, 1, 64, 18176, 65024),
    # deepseek-ai/DeepSeek-V2 and -V3: MLA (kv_lora_rank 512, qk_rope_head_dim 64), 128 heads of 128;
    # MoE, so params are the model cards' totals (V3: 671B without the 14B multi-token-prediction module)
    ModelShape("deepseek-v2", 236e9, 60, 5120, 128, 128, 128, 12288, 102400, kv_lora_rank=512, rope_dim=64),
    ModelShape("deepseek-v3", 671e9, 61, 7168, 128, 128, 128, 18432, 129280, kv_lora_rank=512, rope_dim=64),
]}


def get_shape(name: str) -> ModelShape:
    """A model's shape by its name in MODEL_SHAPES, with the known names in the error.

    定义于 第3章 §3.3
    """
    try:
        return MODEL_SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_SHAPES)}") from None


def kv_table(bytes_per_value: float = 2, context: int = 4096) -> list[dict]:
    """One row per model of MODEL_SHAPES: attention kind, bytes/token, saving vs MHA, GiB for one
    `context`-token sequence.

    定义于 第3章 §3.3
    """
    rows = []
    for shape in MODEL_SHAPES.values():
        per_token = shape.bytes_per_token(bytes_per_value)
        rows.append({"model": shape.name, "kind": shape.attention.upper(), "layers": shape.layers,
                     "q_heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
                     "bytes_per_token": per_token, "KiB_per_token": per_token / KIB,
                     "vs_MHA": shape.mha_bytes_per_token(bytes_per_value) / per_token,
                     "GiB_per_seq": per_token * context / GIB})
    return rows
