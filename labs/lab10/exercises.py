"""Lab 10: the two pieces of an OpenAI-compatible server that are easy to get subtly wrong.

(a) Streaming. The engine hands each request its new token ids step by step. A client expects
    server-sent events: `data: {json}\n\n` per chunk, then `data: [DONE]\n\n`. The text of each
    chunk must come from *incremental detokenization*: one character can span several byte-level
    tokens (alone they decode to U+FFFD), so decoding tokens one at a time and concatenating is
    wrong. Joined, the streamed deltas must equal the non-streamed text exactly.
(b) Validation. A bad body must get OpenAI's error JSON with status 400, never a crash or a 5xx.

`make lab-10` grades this file: unit tests of each function, then a real server on loopback
(`common.serve.launch.ServerProcess(..., impl=this file)`) serving your three functions.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterable, Sequence

from common.engine.sampling_params import SamplingParams
from common.serve.protocol import ChatCompletionRequest, CompletionRequest
from common.serve.sse import final_text
from common.serve.validation import APIError, Limits

__all__ = ["sse_event", "IncrementalDetokenizer", "stream_sse", "validate_request", "final_text", "APIError",
           "Limits", "SamplingParams", "CompletionRequest", "ChatCompletionRequest"]


def sse_event(payload: dict | str) -> str:
    """One SSE event: "data: " + the payload JSON-encoded on ONE line (a str payload such as
    "[DONE]" is sent as it is) + a blank line, i.e. ending in "\\n\\n"."""
    # TODO: json.dumps the dict (it has no newlines), keep a str as it is, frame it
    raise NotImplementedError("sse_event")


class IncrementalDetokenizer:
    """Text deltas of one growing completion.

    push(ids) adds new token ids and returns the text that is now safe to send (maybe ""):
      decode ALL ids so far (tokenizer.decode(ids, skip_special_tokens=...)), and send what is new
      beyond self.text, except
      - trailing "\\ufffd" characters (an unfinished multi-byte character: wait for more tokens),
      - with stop strings: the last len(longest stop) - 1 characters (they may still become a stop
        string), and never anything from the first occurrence of a stop string on.
    finish(stop_reason) returns the rest: final_text(tokenizer, ids, skip_special_tokens, stop_reason)
      minus what was sent (or "" if what was sent is not a prefix of it).
    Keep self.text == everything handed out so far.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, stop: Iterable[str] = ()):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.text = ""

    def push(self, token_ids: Sequence[int]) -> str:
        # TODO: extend self.token_ids, decode all, cut the unsafe tail, return the new part
        raise NotImplementedError("IncrementalDetokenizer.push")

    def finish(self, stop_reason: int | str | None = None) -> str:
        # TODO: the final text minus self.text
        raise NotImplementedError("IncrementalDetokenizer.finish")


async def stream_sse(events: AsyncIterator[list], detokenizers: Sequence[IncrementalDetokenizer],
                     make_chunk: Callable[[int, str, str | None], dict],
                     usage_chunk: Callable[[int], dict] | None = None) -> AsyncIterator[str]:
    """Async generator of SSE strings.

    `events` yields lists of token events (attributes .index, .token_ids, .finish_reason, .stop_reason;
    .index picks the completion, i.e. detokenizers[ev.index]). For EVERY event, as soon as it arrives,
    yield sse_event(make_chunk(ev.index, delta, ev.finish_reason)), where delta is the detokenizer's
    push(ev.token_ids), plus its finish(ev.stop_reason) when ev.finish_reason is not None.
    After the events: sse_event(usage_chunk(total number of generated tokens)) if usage_chunk is
    given, then "data: [DONE]\\n\\n".
    """
    # TODO: async for over events, one chunk per event, then usage and [DONE]
    raise NotImplementedError("stream_sse")
    yield  # (makes this function an async generator)


def validate_request(raw: bytes | str | Any, kind: str,
                     limits: Limits) -> tuple[CompletionRequest | ChatCompletionRequest, list[int], SamplingParams]:
    """Body of POST /v1/completions (kind="completion") or /v1/chat/completions (kind="chat") →
    (request model, prompt token ids, SamplingParams). Raise APIError(message, param=...) (status 400)
    for every client mistake:
    - bytes/str that are not JSON, or JSON that is not an object                      (param None)
    - pydantic validation failing (CompletionRequest / ChatCompletionRequest .model_validate):
      param = the top-level field of the first error (err["loc"][0])
    - model != limits.model_name                                        (param "model", code "model_not_found")
    - the prompt: chat → limits.chat_ids([m.model_dump() for m in req.messages]) (param "messages");
      completion → a string (limits.encode) or a list of token ids in [0, limits.vocab_size), also a
      list holding exactly one of those; anything else, an empty prompt, or a prompt of
      >= limits.max_model_len tokens → param "prompt"
    - max tokens (chat: max_completion_tokens if given, else max_tokens; completion: max_tokens):
      None means the rest of the context; prompt + max tokens > limits.max_model_len → param =
      the field's name
    - stream with n > 1 → param "n"; SamplingParams(...) raising ValueError → 400 (param: the field
      its message starts with, if any). Map: temperature None → 1.0 (below 1e-5 → 0.0, greedy),
      top_p None → 1.0, top_k None → 0, and n, min_tokens, ignore_eos, stop, stop_token_ids, seed,
      skip_special_tokens as they are.
    """
    # TODO: parse, check the model, build the prompt ids, check the lengths, build SamplingParams
    raise NotImplementedError("validate_request")
