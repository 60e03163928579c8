"""The offline benchmark's workload: random token prompts with random input/output lengths drawn
from fixed ranges under a fixed seed, generated with ignore_eos so every engine produces exactly
the same number of tokens (the vLLM `benchmark_throughput --dataset random` recipe)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def parse_range(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """"64:256" → (64, 256); "128" → (128, 128).

    定义于 第10章 §10.5.5
    """
    if isinstance(text, tuple):
        lo, hi = text
    elif isinstance(text, int):
        lo = hi = text
    else:
        parts = str(text).split(":")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"length range must look like 128 or 64:256, got {text!r}")
        lo, hi = int(parts[0]), int(parts[-1])
    if not 1 <= lo <= hi:
        raise ValueError(f"length range needs 1 <= low <= high, got {lo}:{hi}")
    return lo, hi


@dataclass
class Workload:
    """A reproducible random workload: prompt count, length ranges and the seed that draws them.

    定义于 第10章 §10.5.5
    """
    num_prompts: int
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    seed: int
    vocab_size: int
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_input_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    def describe(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("prompts", "output_lens")}
        d.update(num_input_tokens=self.num_input_tokens, num_output_tokens=self.num_output_tokens)
        return d


def make_workload(num_prompts: int, input_len, output_len, vocab_size: int, seed: int = 0,
                  avoid_ids: tuple[int, ...] = (0, 1, 2)) -> Workload:
    """Random prompts; ids in `avoid_ids` (special tokens) are never drawn.

    定义于 第10章 §10.5.5
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    (ilo, ihi), (olo, ohi) = parse_range(input_len), parse_range(output_len)
    gen = torch.Generator().manual_seed(seed)
    low = max(avoid_ids) + 1 if avoid_ids else 0
    in_lens = torch.randint(ilo, ihi + 1, (num_prompts,), generator=gen).tolist()
    out_lens = torch.randint(olo, ohi + 1, (num_prompts,), generator=gen).tolist()
    prompts = [torch.randint(low, vocab_size, (n,), generator=gen).tolist() for n in in_lens]
    return Workload(num_prompts, (ilo, ihi), (olo, ohi), seed, vocab_size, prompts, out_lens)
