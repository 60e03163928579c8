"""KV-cache bytes per token for every attention variant (MHA, GQA, MQA, MLA), with real configs.

The book (5.3.5) writes 2 × layers × heads × head_dim × bytes. With GQA/MQA the count that
matters is the number of *KV* heads, not query heads; MLA (DeepSeek-V2/V3) caches one
compressed latent of kv_lora_rank values plus a shared RoPE key of rope_dim values per layer.
Chapter 3 (memory budget) and chapter 6 (paged cache) reuse these numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 ** 3


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """2 (K and V) × layers × KV heads × head_dim × bytes. Pass KV heads, not query heads.

    定义于 第6章 §6.4
    """
    _check_positive(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    bytes_per_value=bytes_per_value)
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_value


def mla_bytes_per_token(num_layers: int, kv_lora_rank: int, rope_dim: int, bytes_per_value: int = 2) -> int:
    """MLA caches one latent c_KV (kv_lora_rank) and one shared RoPE key (rope_dim) per layer:
    no factor 2, no heads. K and V of every head are re-expanded from the latent.

    定义于 第6章 §6.4
    """
    _check_positive(num_layers=num_layers, kv_lora_rank=kv_lora_rank, rope_dim=rope_dim,
                    bytes_per_value=bytes_per_value)
    return num_layers * (kv_lora_rank + rope_dim) * bytes_per_value


def kv_cache_bytes(bytes_per_token: int, num_tokens: int, batch_size: int = 1) -> int:
    """Bytes for `batch_size` sequences of `num_tokens` each.

    定义于 第6章 §6.4
    """
    _check_positive(bytes_per_token=bytes_per_token, num_tokens=num_tokens, batch_size=batch_size)
    return bytes_per_token * num_tokens * batch_size


@dataclass(frozen=True)
class AttentionConfig:
    """The few config.json numbers that fix the KV-cache size of a model.

    定义于 第6章 §6.4
    """
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_lora_rank: int = 0   # MLA only
    rope_dim: int = 0       # MLA only: qk_rope_head_dim

    def __post_init__(self) -> None:
        _check_positive(num_layers=self.num_layers, num_heads=self.num_heads,
                        num_kv_heads=self.num_kv_heads, head_dim=self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: {self.num_heads} query heads are not a multiple of "
                             f"{self.num_kv_heads} KV heads")

    @property
    def kind(self) -> str:
        if self.kv_lora_rank:
            return "MLA"
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    def bytes_per_token(self, bytes_per_value: int = 2) -> int:
        if self.kind == "MLA":
            return mla_bytes_per_token(self.num_layers, self.kv_lora_rank, self.rope_dim, bytes_per_value)
        return kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, bytes_per_value)

    def mha_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """The same model with one K and one V per query head: the baseline the variants shrink."""
        return kv_bytes_per_token(self.num_layers, self.num_heads, self.head_dim, bytes_per_value)


# Values from each model's config.json on the Hugging Face Hub.
KNOWN_CONFIGS: dict[str, AttentionConfig] = {c.name: c for c in [
    AttentionConfig("SmolLM2-135M", 30, 9, 3, 64),
    AttentionConfig("Llama-2-7B", 32, 32, 32, 128),
    AttentionConfig("Llama-2-13B", 40, 40, 40, 128),
    AttentionConfig("Llama-2-70B", 80, 64, 8, 128),
    AttentionConfig("Llama-3-8B", 32, 32, 8, 128),
    AttentionConfig("Llama-3-70B", 80, 64, 8, 128),
    AttentionConfig("Qwen2-7B", 28, 28, 4, 128),
    AttentionConfig("Mistral-7B", 32, 32, 8, 128),
    AttentionConfig("Falcon-7B", 32, 71, 1, 64),
    AttentionConfig("DeepSeek-V2", 60, 128, 128, 128, kv_lora_rank=512, rope_dim=64),
    AttentionConfig("DeepSeek-V3", 61, 128, 128, 128, kv_lora_rank=512, rope_dim=64),
]}


def kv_table(bytes_per_value: int = 2, context: int = 4096) -> list[dict]:
    """One row per known model: kind, bytes/token, saving vs MHA, GiB for one `context`-token sequence.

    定义于 第6章 §6.4
    """
    rows = []
    for cfg in KNOWN_CONFIGS.values():
        per_token = cfg.bytes_per_token(bytes_per_value)
        rows.append({"model": cfg.name, "kind": cfg.kind, "layers": cfg.num_layers, "q_heads": cfg.num_heads,
                     "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "bytes_per_token": per_token,
                     "KiB_per_token": per_token / KIB,
                     "vs_MHA": cfg.mha_bytes_per_token(bytes_per_value) / per_token,
                     "GiB_per_seq": per_token * context / GIB})
    return rows
