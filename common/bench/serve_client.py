"""One streaming /v1/completions request, timed chunk by chunk.

The serving benchmark sends token-id prompts with ignore_eos and max_tokens = the wanted output
length, so every server generates exactly the same number of tokens. Timing comes from the SSE
stream itself: TTFT is the arrival of the first chunk that carries a choice, ITL the gaps between
later chunks. vLLM streams one token per completion chunk; the token count is taken from the final
usage chunk (stream_options.include_usage) when the server sends one, otherwise from the chunks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class RequestResult:
    """Everything measured for one request; `error` is set (and `ok` False) when it failed.

    定义于 第10章 §10.5.5
    """
    index: int
    prompt_len: int
    max_tokens: int
    start_s: float = 0.0          # send time, relative to the benchmark start
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    chunks: int = 0               # chunks that carried a choice
    usage_tokens: int | None = None  # usage.completion_tokens from the final chunk, if sent
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage count when given, else the streamed chunks."""
        return self.usage_tokens if self.usage_tokens is not None else self.chunks

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first: (e2e - ttft) / (n - 1)."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def completion_payload(model: str, prompt: list[int] | str, max_tokens: int, user: str | None = None) -> dict:
    """The request body: greedy, ignore_eos, exactly `max_tokens` tokens, usage in the last chunk.

    定义于 第10章 §10.5.5
    """
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if user is not None:
        body["user"] = user
    return body


def _handle_event(result: RequestResult, event: dict, now: float, last: float | None) -> float | None:
    """Fold one parsed SSE event into `result`; returns the time of the last token chunk."""
    if "error" in event:
        raise RuntimeError(f"server error in stream: {event['error']}")
    usage = event.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        result.usage_tokens = int(usage["completion_tokens"])
    for choice in event.get("choices") or []:
        result.chunks += 1
        result.text += choice.get("text") or ""
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
        if result.ttft_s is None:
            result.ttft_s = now
        elif last is not None:
            result.itl_s.append(now - last)
        last = now
    return last


async def stream_completion(session: aiohttp.ClientSession, url: str, body: dict, result: RequestResult,
                            t0: float) -> RequestResult:
    """POST `body` to `url` (…/v1/completions), read the SSE stream, fill `result` in place.
    Times are measured from the send; `t0` is the benchmark start (for `start_s`).

    定义于 第10章 §10.5.5
    """
    sent = time.perf_counter()
    result.start_s = sent - t0
    last: float | None = None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise RuntimeError(f"HTTP {resp.status}: {text}")
            buffer = b""
            done = False
            async for raw in resp.content:
                buffer += raw
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    now = time.perf_counter() - sent
                    last = _handle_event(result, json.loads(data), now, last)
            if not done:
                raise RuntimeError("stream ended without data: [DONE]")
        result.e2e_s = time.perf_counter() - sent
        if result.chunks == 0:
            raise RuntimeError("stream carried no tokens")
        if result.output_tokens != result.max_tokens:
            raise RuntimeError(f"asked for {result.max_tokens} tokens (ignore_eos), got {result.output_tokens}")
    except Exception as exc:  # counted as a failed request with its reason, never dropped
        result.error = f"{type(exc).__name__}: {exc}"[:400]
    return result
