"""SamplingParams with vLLM's field names and semantics, validated up front so a bad request fails
at `generate()` with a message instead of deep inside a step."""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20            # vLLM's default max_logprobs
STOP_TAIL_MARGIN = 8         # extra tokens decoded around the longest stop string (see engine/stop.py)


@dataclass
class SamplingParams:
    """How to sample one request. temperature 0 means greedy (argmax), as in vLLM.

    Penalties (vLLM/OpenAI semantics, applied to the logits before temperature):
    presence_penalty subtracts itself from every token already generated, frequency_penalty
    subtracts itself times the token's count in the output (both in [-2, 2]); repetition_penalty
    (HF/vLLM, > 0) divides the positive and multiplies the negative logits of every token seen in
    the prompt or the output. logprobs=N returns, per generated token, the N most likely tokens
    plus the sampled one with the model's raw log-probabilities (before penalties and temperature,
    vLLM's "raw_logprobs"); 0 = the sampled token only.

    定义于 第5章 §5.2
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: no top-k
    max_tokens: int | None = 16
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    ignore_eos: bool = False
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    skip_special_tokens: bool = True
    stop_list: list[str] = field(init=False, repr=False)
    stop_tail_tokens: int = field(init=False, repr=False)   # output tokens a stop string can span

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == -1:
            self.top_k = 0
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be 0/-1 (disabled) or a positive integer, got {self.top_k!r}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        self.stop_list = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not isinstance(s, str) or not s for s in self.stop_list):
            raise ValueError("stop strings must be non-empty strings")
        self.stop_token_ids = list(self.stop_token_ids or [])
        # every token decodes to at least one byte, so a stop string spans at most its UTF-8 length in tokens
        self.stop_tail_tokens = max((len(s.encode()) for s in self.stop_list), default=0) + STOP_TAIL_MARGIN

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0
