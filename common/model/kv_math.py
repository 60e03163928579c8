"""KV-cache bytes per token for every attention variant (MHA, GQA, MQA, MLA): the formulas.

The book (5.3.5) writes 2 × layers × heads × head_dim × bytes. With GQA/MQA the count that
matters is the number of *KV* heads, not query heads; MLA (DeepSeek-V2/V3) caches one
compressed latent of kv_lora_rank values plus a shared RoPE key of rope_dim values per layer.
`kv_bytes_per_token` is the repo's one definition: the model shapes (`common.model.model_shapes`), the
memory calculator (chapter 3) and the KV stores (chapters 6 and 8) all call it.
"""
from __future__ import annotations

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 ** 3


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_bytes(bytes_per_value: float) -> None:
    if isinstance(bytes_per_value, bool) or not isinstance(bytes_per_value, (int, float)) or not bytes_per_value > 0:
        raise ValueError(f"bytes_per_value must be a positive number, got {bytes_per_value!r}")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_value: float = 2) -> int | float:
    """2 (K and V) × layers × KV heads × head_dim × bytes. Pass KV heads, not query heads.

    `bytes_per_value`: 2 for bf16/fp16, 1 for int8/fp8, 0.5 for 4-bit (an int result for whole bytes);
    per-token scales of a quantized store are the store's own to add.

    定义于 第6章 §6.4
    """
    _check_positive(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim)
    _check_bytes(bytes_per_value)
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_value


def mla_bytes_per_token(num_layers: int, kv_lora_rank: int, rope_dim: int, bytes_per_value: float = 2) -> int | float:
    """MLA caches one latent c_KV (kv_lora_rank) and one shared RoPE key (rope_dim) per layer:
    no factor 2, no heads. K and V of every head are re-expanded from the latent.

    定义于 第6章 §6.4
    """
    _check_positive(num_layers=num_layers, kv_lora_rank=kv_lora_rank, rope_dim=rope_dim)
    _check_bytes(bytes_per_value)
    return num_layers * (kv_lora_rank + rope_dim) * bytes_per_value
