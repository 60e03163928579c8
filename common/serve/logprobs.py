"""Per-token logprobs in OpenAI's two formats, from the engine's `{token id: raw logprob}` per
generated token (the sampled token and the N most likely ones; common.engine.SamplingParams.logprobs).

- /v1/completions (`logprobs: N`): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, where
  top_logprobs[i] maps the decoded string of the sampled token and of the N most likely ones to
  their logprob, and text_offset[i] is where token i starts in the concatenated token strings;
- /v1/chat/completions (`logprobs: true, top_logprobs: N`): `{"content": [{"token", "logprob",
  "bytes", "top_logprobs": [N × {"token", "logprob", "bytes"}]}]}`, best first.

As vLLM does, a token is named by its own decode (a piece of a multi-byte character decodes to
U+FFFD; `bytes` carries its real UTF-8 bytes), and -inf is reported as -9999.0 (JSON has no inf).
Streamed chunks carry the logprobs of their own tokens; joined, they equal the non-streamed ones.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

MIN_LOGPROB = -9999.0


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (byte-level BPE vocabularies).

    定义于 第10章 §10.2
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}


class LogprobFormat:
    """Formats the logprobs of one request; `num` = how many alternatives the client asked for.

    定义于 第10章 §10.2
    """

    def __init__(self, tokenizer: Any, num: int) -> None:
        self.tokenizer, self.num = tokenizer, num
        self.offset = 0                      # completions' text_offset of the next token
        self.token_text = lru_cache(maxsize=4096)(self._token_text)
        self.token_bytes = lru_cache(maxsize=4096)(self._token_bytes)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _token_bytes(self, token_id: int) -> list[int]:
        """The token's own UTF-8 bytes (byte-level BPE: map its characters back to bytes; otherwise the
        bytes of its decode)."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(c in BYTE_OF_CHAR for c in piece):
            return [BYTE_OF_CHAR[c] for c in piece]
        return list(self.token_text(token_id).encode("utf-8"))

    def _ranked(self, sampled: int, logprobs: dict[int, float]) -> tuple[float, list[tuple[int, float]]]:
        """(sampled token's logprob, the `num` most likely (id, logprob), best first)."""
        best = sorted(logprobs.items(), key=lambda kv: (-kv[1], kv[0]))[:self.num]
        return _clamp(logprobs[sampled]), [(t, _clamp(lp)) for t, lp in best]

    def completion(self, token_ids: Sequence[int], logprobs: Sequence[dict[int, float]]) -> dict:
        """OpenAI's legacy completions logprobs object for these tokens (offsets go on across calls)."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, lps in zip(token_ids, logprobs, strict=True):
            own, best = self._ranked(token, lps)
            text = self.token_text(token)
            out["tokens"].append(text)
            out["token_logprobs"].append(own)
            out["top_logprobs"].append({self.token_text(t): lp for t, lp in [(token, own), *best]})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out

    def chat(self, token_ids: Sequence[int], logprobs: Sequence[dict[int, float]]) -> dict:
        """OpenAI's chat logprobs object for these tokens."""
        content = []
        for token, lps in zip(token_ids, logprobs, strict=True):
            own, best = self._ranked(token, lps)
            content.append({**self._entry(token, own), "top_logprobs": [self._entry(t, lp) for t, lp in best]})
        return {"content": content}

    def _entry(self, token: int, logprob: float) -> dict:
        return {"token": self.token_text(token), "logprob": logprob, "bytes": self.token_bytes(token)}


def _clamp(logprob: float) -> float:
    return max(float(logprob), MIN_LOGPROB)

