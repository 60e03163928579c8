"""Request validation: turn a raw HTTP body into (request, prompt ids, SamplingParams), or raise
`APIError` that the server answers with OpenAI's error JSON
`{"error": {"message", "type", "param", "code"}}`.

Everything a client can get wrong is checked here, before the request reaches the engine thread:
malformed JSON, wrong types (pydantic), an unknown model, a prompt that does not fit the context,
max_tokens beyond the context, sampling parameters SamplingParams refuses. FastAPI would answer
schema errors with its own 422 shape, which OpenAI clients do not understand; the server routes
everything through here instead. Lab 10 (b) asks readers to write `validate_request`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from ..engine.sampling_params import SamplingParams
from .protocol import MODELS, ChatCompletionRequest, CompletionRequest, RequestKind


GREEDY_BELOW = 1e-5   # vLLM's rule: a smaller temperature is greedy (dividing by it overflows)


class APIError(Exception):
    """An error the client caused (or a full queue): HTTP status + OpenAI's error fields.

    定义于 第10章 §10.8
    """

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """An OpenAI-format error body for a request that fails validation.

    定义于 第10章 §10.8
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Limits:
    """What the serving model allows; `chat_ids(messages)` applies the chat template.

    定义于 第10章 §10.8
    """

    model_name: str
    max_model_len: int
    vocab_size: int
    encode: Callable[[str], list[int]]
    chat_ids: Callable[[list[dict]], list[int]]


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "body"


def parse_body(raw: bytes | str | Any, kind: RequestKind) -> CompletionRequest | ChatCompletionRequest:
    """JSON text (or an already decoded object) → the pydantic request model, else APIError(400).

    定义于 第10章 §10.8
    """
    if isinstance(raw, (bytes, bytearray, str)):
        try:
            raw = json.loads(raw)
        except RecursionError:                          # e.g. "[" * 100_000: deeper than Python recurses
            raise APIError("request body is nested too deeply") from None
        except ValueError as e:     # not JSON, not UTF-8/16/32, or an integer beyond Python's 4300 digits
            raise APIError(f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(raw, dict):
        raise APIError(f"request body must be a JSON object, got {type(raw).__name__}")
    try:
        return MODELS[kind].model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        param = str(first["loc"][0]) if first.get("loc") else None     # the top-level field, as OpenAI names it
        raise APIError(f"{_loc(first)}: {first['msg']}", param=param) from None


def require_utf8(text: str, param: str) -> str:
    """JSON may carry a lone surrogate ("\\ud800"), which no UTF-8 text (and no tokenizer) accepts.

    定义于 第10章 §10.8
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(f"{param} is not valid Unicode text: {e.reason} at position {e.start}", param=param) from None
    return text


def prompt_ids(req: CompletionRequest | ChatCompletionRequest, limits: Limits) -> list[int]:
    """The prompt as token ids: chat template, text, or the client's own ids (range-checked).

    定义于 第10章 §10.8
    """
    if isinstance(req, ChatCompletionRequest):
        for m in req.messages:
            require_utf8(m.content, "messages")
        ids = limits.chat_ids([m.model_dump() for m in req.messages])
        param = "messages"
    else:
        prompt, param = req.prompt, "prompt"
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]          # a batch of one, as the openai client may send
        if isinstance(prompt, str):
            ids = limits.encode(require_utf8(prompt, param))
        elif all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < limits.vocab_size]
            if bad:
                raise APIError(f"token id {bad[0]} is outside the vocabulary [0, {limits.vocab_size})", param=param)
        else:
            raise APIError("one prompt per request: a string or a list of token ids", param=param)
    if not ids:
        raise APIError("the prompt is empty", param=param)
    if len(ids) >= limits.max_model_len:
        raise APIError(f"the prompt has {len(ids)} tokens but the context is {limits.max_model_len} tokens "
                       "(at least one must be generated)", param=param, code="context_length_exceeded")
    return ids


def sampling_params(req: CompletionRequest | ChatCompletionRequest, num_prompt: int,
                    limits: Limits) -> SamplingParams:
    """OpenAI fields → SamplingParams; max_tokens defaults to the rest of the context (vLLM's rule).

    定义于 第10章 §10.8
    """
    wanted = req.wanted_tokens if isinstance(req, ChatCompletionRequest) else req.max_tokens
    room = limits.max_model_len - num_prompt
    chat_limit = isinstance(req, ChatCompletionRequest) and req.max_completion_tokens
    name = "max_completion_tokens" if chat_limit else "max_tokens"
    if wanted is not None and wanted > room:
        raise APIError(f"{name}={wanted} plus the prompt's {num_prompt} tokens exceed the context of "
                       f"{limits.max_model_len} tokens", param=name, code="context_length_exceeded")
    if req.stream and req.n > 1:
        raise APIError("n > 1 is only supported without streaming", param="n")
    for stop in [req.stop] if isinstance(req.stop, str) else (req.stop or []):
        require_utf8(stop, "stop")
    if req.stop_token_ids and any(not 0 <= t < limits.vocab_size for t in req.stop_token_ids):
        raise APIError("stop_token_ids must be token ids of the vocabulary", param="stop_token_ids")
    try:
        temperature = 1.0 if req.temperature is None else req.temperature
        return SamplingParams(n=req.n, temperature=0.0 if temperature < GREEDY_BELOW else temperature,
                              top_p=1.0 if req.top_p is None else req.top_p,
                              top_k=0 if req.top_k is None else req.top_k,
                              max_tokens=room if wanted is None else wanted, min_tokens=req.min_tokens,
                              ignore_eos=req.ignore_eos, stop=req.stop, stop_token_ids=req.stop_token_ids,
                              seed=req.seed, skip_special_tokens=req.skip_special_tokens,
                              presence_penalty=req.presence_penalty or 0.0,
                              frequency_penalty=req.frequency_penalty or 0.0,
                              repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
                              logprobs=req.num_logprobs if isinstance(req, ChatCompletionRequest) else req.logprobs)
    except (ValueError, TypeError) as e:
        message = str(e)
        param = next((p for p in ("min_tokens", "max_tokens", "temperature", "top_p", "top_k", "stop", "n",
                                  "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs")
                      if message.startswith(p)), None)
        raise APIError(message, param=param) from None


def validate_request(raw: bytes | str | Any, kind: RequestKind,
                     limits: Limits) -> tuple[CompletionRequest | ChatCompletionRequest, list[int], SamplingParams]:
    """The whole check: parse, model name, prompt, sampling parameters. Raises APIError.

    定义于 第10章 §10.8
    """
    req = parse_body(raw, kind)
    if req.model != limits.model_name:
        raise APIError(f"the model {req.model!r} does not exist; this server serves {limits.model_name!r}",
                       param="model", code="model_not_found")
    ids = prompt_ids(req, limits)
    return req, ids, sampling_params(req, len(ids), limits)
