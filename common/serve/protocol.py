"""Request bodies of the OpenAI API (the subset our server implements, plus vLLM's extensions
ignore_eos / min_tokens / top_k), as pydantic models. Wrong types are rejected (they become 400
errors, see common.serve.validation).

OpenAI fields the server does not implement (echo, logit_bias, tools, ...) are declared
too, so that a client who sets one gets 400 naming it instead of an answer that silently lacks it;
their default or null values are accepted, because clients and SDKs may send those. Fields nobody
documents are still ignored, as OpenAI-compatible servers (vLLM) do.

The models also document the API: FastAPI publishes them in /openapi.json, which the fuzz test
draws request bodies from (the unsupported fields are left out of that schema: they accept nothing
but their defaults).
"""
from __future__ import annotations

import reprlib
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import SkipJsonSchema

from ..engine.sampling_params import MAX_LOGPROBS

Prompt = Union[str, list[int], list[str], list[list[int]]]
MAX_STOP_STRINGS = 4          # OpenAI's limit; each stop string costs a search per generated token
Unsupported = SkipJsonSchema[Any]

# field -> the values that mean "not used" (compared with their type: completions' logprobs=0 asks
# for the sampled token's logprob, so 0 is not False there)
UNSUPPORTED_COMMON: dict[str, tuple] = {"logit_bias": (None, {}), "min_p": (None, 0, 0.0)}
UNSUPPORTED_COMPLETION: dict[str, tuple] = {**UNSUPPORTED_COMMON, "echo": (None, False), "best_of": (None, 1),
                                            "suffix": (None, "")}
UNSUPPORTED_CHAT: dict[str, tuple] = {
    **UNSUPPORTED_COMMON, "response_format": (None, {"type": "text"}),
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "store": (None, False),
    "metadata": (None, {}), "service_tier": (None, "auto", "default"), "reasoning_effort": (None,),
    "web_search_options": (None,),
}


def is_unused(value: Any, unused: tuple) -> bool:
    """`value` equals one of `unused` with the same type (0 == False must not count).

    定义于 第10章 §10.2
    """
    return any(type(value) is type(u) and value == u for u in unused)


def _short(value: Any) -> str:
    """A bounded repr for the error message (reprlib caps length and depth: a client's value may be
    megabytes, or nested deeper than repr can recurse)."""
    return reprlib.repr(value)


class StreamOptions(BaseModel):
    """OpenAI's stream_options: whether the last streamed chunk carries usage.

    定义于 第10章 §10.2
    """
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")
    UNSUPPORTED: ClassVar[dict[str, tuple]] = UNSUPPORTED_COMMON

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

    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=100.0)     # vLLM's extension

    logit_bias: Unsupported = None
    min_p: Unsupported = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}")
        return stop

    @field_validator("*")
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        unused = cls.UNSUPPORTED.get(info.field_name)
        if unused is not None and not is_unused(value, unused):
            raise ValueError(f"{info.field_name}={_short(value)} is not supported by this server "
                             f"(accepted: {', '.join(repr(u) for u in unused)})")
        return value


class CompletionRequest(_Common):
    """POST /v1/completions. `prompt` is one string or one token-id list (a batch of prompts is
    rejected with a clear error: one request = one prompt keeps usage and streaming simple).

    定义于 第10章 §10.2
    """

    UNSUPPORTED: ClassVar[dict[str, tuple]] = UNSUPPORTED_COMPLETION

    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)   # the N most likely tokens per position

    echo: Unsupported = None
    best_of: Unsupported = None
    suffix: Unsupported = None


class ChatMessage(BaseModel):
    """One chat message (role and content) of a chat completion request.

    定义于 第10章 §10.2
    """
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions; the prompt is the tokenizer's chat template over `messages`.

    定义于 第10章 §10.2
    """

    UNSUPPORTED: ClassVar[dict[str, tuple]] = UNSUPPORTED_CHAT

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: Unsupported = None
    tools: Unsupported = None
    tool_choice: Unsupported = None
    functions: Unsupported = None
    function_call: Unsupported = None
    parallel_tool_calls: Unsupported = None
    modalities: Unsupported = None
    audio: Unsupported = None
    prediction: Unsupported = None
    store: Unsupported = None
    metadata: Unsupported = None
    service_tier: Unsupported = None
    reasoning_effort: Unsupported = None
    web_search_options: Unsupported = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):        # OpenAI's rule; logprobs is validated before
            raise ValueError("top_logprobs needs logprobs=true")
        return top

    @property
    def num_logprobs(self) -> int | None:
        """SamplingParams.logprobs: None (not asked), else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def wanted_tokens(self) -> int | None:
        """max_completion_tokens is OpenAI's newer name; it wins when both are given."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


RequestKind = Literal["completion", "chat"]
MODELS: dict[str, type[_Common]] = {"completion": CompletionRequest, "chat": ChatCompletionRequest}
