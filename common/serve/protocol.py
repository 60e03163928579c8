"""Request bodies of the OpenAI API (the subset our server implements, plus vLLM's extensions
ignore_eos / min_tokens / top_k), as pydantic models. Unknown fields are ignored, as OpenAI and
vLLM do; wrong types are rejected (they become 400 errors, see common.serve.validation).

The models also document the API: FastAPI publishes them in /openapi.json, which the fuzz test
draws request bodies from.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Prompt = Union[str, list[int], list[str], list[list[int]]]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=0, le=2**62)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=2**31 - 1)
    skip_special_tokens: bool = True
    user: str | None = None


class CompletionRequest(_Common):
    """POST /v1/completions. `prompt` is one string or one token-id list (a batch of prompts is
    rejected with a clear error: one request = one prompt keeps usage and streaming simple)."""

    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions; the prompt is the tokenizer's chat template over `messages`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def wanted_tokens(self) -> int | None:
        """max_completion_tokens is OpenAI's newer name; it wins when both are given."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


RequestKind = Literal["completion", "chat"]
MODELS: dict[str, type[_Common]] = {"completion": CompletionRequest, "chat": ChatCompletionRequest}
