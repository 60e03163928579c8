"""A per-request banned-token list as a vLLM V1 logits processor (§5.11.7, exercise 10.5).

A request opts in with `SamplingParams(extra_args={"banned_token_ids": [ids...]})`; its rows get -inf at those
ids before sampling, so they can never be generated (greedy or sampled). Requests without the key are untouched.
Load with `LLM(..., logits_processors=[BANNED_TOKENS_PROCESSOR])` (a qualified name: it is imported in vLLM's
worker process).
"""
from __future__ import annotations

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

EXTRA_ARG = "banned_token_ids"


def _banned_ids(params: SamplingParams, _prompt_ids: list[int] | None, _output_ids: list[int]) -> list[int] | None:
    ids = (params.extra_args or {}).get(EXTRA_ARG)
    return list(ids) if ids else None


class BannedTokensLogitsProcessor(LogitsProcessor):
    """Keeps {batch row -> banned ids}; vLLM reports rows added, removed and moved through `update_state`.

    定义于 第5章 §5.11.7
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.banned: dict[int, list[int]] = {}
        self._rows = torch.empty(0, dtype=torch.long)
        self._cols = torch.empty(0, dtype=torch.long)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        ids = (sampling_params.extra_args or {}).get(EXTRA_ARG)
        if ids is not None and not (isinstance(ids, (list, tuple)) and all(isinstance(i, int) and i >= 0 for i in ids)):
            raise ValueError(f"extra_args[{EXTRA_ARG!r}] must be a list of non-negative token ids, got {ids!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # banning the argmax changes greedy output

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if process_dict_updates(self.banned, batch_update, _banned_ids):
            rows = [row for row, ids in self.banned.items() for _ in ids]
            cols = [tok for ids in self.banned.values() for tok in ids]
            self._rows = torch.tensor(rows, dtype=torch.long, device=self.device)
            self._cols = torch.tensor(cols, dtype=torch.long, device=self.device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.banned:
            logits[self._rows, self._cols] = float("-inf")
        return logits
