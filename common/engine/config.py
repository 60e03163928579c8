"""`EngineConfig`: every engine setting and its default, in one place.

`LLM(model, **overrides)` builds one; the server's and the benchmark's command lines derive their
flags from it (`add_cli_args` / `from_cli_args`), with vLLM's flag names, so a default changes here
and nowhere else. Values are checked when the config is built, so a typo fails at startup.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from .kv_stores import KV_STORES

SCHEDULING_POLICIES = ("fcfs", "priority", "sjf")
KV_CACHE_DTYPES = tuple(KV_STORES)     # the store table decides which kv_cache_dtype values exist


def _flag(help: str, **argparse_kw: Any) -> dict:
    """Field metadata: the field is a CLI flag `--field-name` with this help (extra argparse kwargs)."""
    return {"help": help, "argparse": argparse_kw}


@dataclass(frozen=True)
class EngineConfig:
    """Every engine setting with its default (vLLM's names where vLLM has one).

    定义于 第7章 §7.6
    """
    dtype: str | torch.dtype = field(default="bfloat16", metadata=_flag("model and KV dtype"))
    device: str | None = field(default=None, metadata=_flag("cpu / cuda (default: cuda when available)"))
    block_size: int = field(default=16, metadata=_flag("tokens per KV block", type=int))
    kv_cache_memory: int = field(default=1 << 30, metadata=_flag("bytes of KV cache", type=int))
    gpu_memory_utilization: float | None = field(
        default=None, metadata=_flag("CUDA only: size the KV cache to this fraction of GPU memory "
                                     "(minus what the model holds) instead of --kv-cache-memory", type=float))
    num_blocks: int | None = None        # an exact KV pool size (tests, notebooks): overrides the two above
    kv_cache_dtype: str = field(default="auto", metadata=_flag(
        "auto = the model dtype; int8 = int8 codes + one fp16 scale per (token, kv head)",
        choices=KV_CACHE_DTYPES))
    max_num_seqs: int = field(default=256, metadata=_flag("sequences per step", type=int))
    max_num_batched_tokens: int = field(default=2048, metadata=_flag("token budget per step", type=int))
    max_model_len: int | None = field(default=None, metadata=_flag(
        "context length (default and maximum: the model's max_position_embeddings)", type=int))
    enable_prefix_caching: bool = field(default=True, metadata=_flag(
        "reuse the KV of cached prompt blocks", action=argparse.BooleanOptionalAction))
    enable_chunked_prefill: bool = field(default=True, metadata=_flag(
        "split long prefills over steps under the token budget", action=argparse.BooleanOptionalAction))
    scheduling_policy: str = field(default="fcfs", metadata=_flag("waiting-queue order",
                                                                  choices=SCHEDULING_POLICIES))
    aging: float = 0.0                   # priority policy: priority units gained per second waited
    async_scheduling: bool = field(default=False, metadata=_flag(
        "overlap scheduling: schedule step t+1 while step t runs (generate() only)",
        action=argparse.BooleanOptionalAction))

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "kv_cache_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"the KV cache must hold at least one block, got num_blocks={self.num_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 (a prompt token and a generated one), "
                             f"got {self.max_model_len}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"unknown scheduling_policy {self.scheduling_policy!r}; use one of {SCHEDULING_POLICIES}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def build(cls, base: EngineConfig | None = None, **overrides: Any) -> EngineConfig:
        """`base` (default: the defaults) with `overrides`; an unknown name is a TypeError listing the valid ones."""
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown engine setting(s) {unknown}; valid: {', '.join(cls.names())}")
        return replace(base or cls(), **overrides)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add one vLLM-named flag per CLI setting (`--max-num-seqs`, `--block-size`, ...), defaults from here."""
        group = parser.add_argument_group("engine")
        for f in fields(cls):
            if "argparse" in f.metadata:
                default = f.default
                text = f.metadata["help"]
                group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                                   help=text if "default" in text else f"{text} (default: {default})",
                                   **f.metadata["argparse"])
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineConfig:
        """The config of parsed flags (settings without a flag keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def kv_cache_bytes(self, device: torch.device) -> int:
        """Bytes the KV pool may take: --gpu-memory-utilization of the GPU minus what is already
        allocated (the weights), on CUDA; else --kv-cache-memory."""
        if self.gpu_memory_utilization is None:
            return self.kv_cache_memory
        if device.type != "cuda":
            raise ValueError("gpu_memory_utilization applies to CUDA; on CPU size the KV cache with kv_cache_memory")
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * self.gpu_memory_utilization) - torch.cuda.memory_allocated(device)
