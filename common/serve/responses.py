"""OpenAI response objects (completion / chat completion, whole and as stream chunks), as dicts."""
from __future__ import annotations

import time
import uuid
from typing import Callable

from .logprobs import LogprobFormat


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage object: prompt, completion and total tokens.

    定义于 第10章 §10.2
    """
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseFactory:
    """Builds the dicts of one request: same id, creation time and model in every chunk.

    定义于 第10章 §10.2
    """

    def __init__(self, kind: str, model: str) -> None:
        self.chat = kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        # streamed logprobs: the app attaches each event's logprobs object before stream_sse makes its
        # chunk (make_chunk's signature is lab 10's, without the event)
        self.attached: dict[int, dict] = {}

    def _base(self, stream: bool) -> dict:
        obj = ("chat.completion" if self.chat else "text_completion") + (".chunk" if stream and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, finish_reason: str | None, stream: bool,
               first: bool = False, logprobs: dict | None = None) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        if stream:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish_reason}

    def full(self, choices: list[tuple[str, str | None]], prompt_tokens: int, completion_tokens: int,
             logprobs: list[dict | None] | None = None) -> dict:
        """The non-streamed response: one (text, finish_reason) per completion (and its logprobs object)."""
        logprobs = logprobs or [None] * len(choices)
        return {**self._base(False),
                "choices": [self.choice(i, text, reason, False, logprobs=logprobs[i])
                            for i, (text, reason) in enumerate(choices)],
                "usage": usage(prompt_tokens, completion_tokens)}

    def logprobs_of(self, fmt: LogprobFormat, token_ids: list[int], logprobs: list[dict[int, float]]) -> dict:
        return fmt.chat(token_ids, logprobs) if self.chat else fmt.completion(token_ids, logprobs)

    def chunk_maker(self, n: int, include_usage: bool) -> Callable[[int, str, str | None], dict]:
        """make_chunk(index, delta, finish_reason) for common.serve.sse.stream_sse. With include_usage,
        every chunk carries "usage": null, as OpenAI does, and the last one the counts."""
        started: set[int] = set()

        def make(index: int, delta: str, finish_reason: str | None) -> dict:
            first = index not in started
            started.add(index)
            logprobs = self.attached.pop(index, None)
            chunk = {**self._base(True), "choices": [self.choice(index, delta, finish_reason, True, first, logprobs)]}
            if include_usage:
                chunk["usage"] = None
            return chunk
        return make

    def usage_chunk(self, prompt_tokens: int) -> Callable[[int], dict]:
        return lambda completion_tokens: {**self._base(True), "choices": [],
                                          "usage": usage(prompt_tokens, completion_tokens)}
