"""Streaming detokenization in O(new tokens) per push: what the server uses.

Lab 10's `common.serve.sse.IncrementalDetokenizer` (the readers' version) decodes *all* tokens so far
on every push: correct, but a 4k-token answer then costs 4k decodes of up to 4k tokens each, on the
event loop that streams everyone else's tokens. `StreamingDetokenizer` has the same interface and
the same output (all deltas joined == `sse.final_text(...)`), and decodes each token once:

- with a fast tokenizer, `tokenizers.decoders.DecodeStream` (tokenizers >= 0.21) keeps the few
  tokens of an unfinished character (byte-fallback / byte-level pieces of an emoji or a CJK
  character) and returns text only once it is valid UTF-8;
- otherwise vLLM's prefix/read offsets (`detokenize_incrementally`): decode a short window of tokens
  before and after the read offset and hand out only what the new tokens added.

Stop strings: a stop string can only start in text not yet sent (the last len(stop)-1 characters
are always held back), so each push searches only the unsent tail, never the whole output.
`finish()` decodes the whole completion once (O(n) once per request) so the joined deltas equal the
non-streamed text exactly, including where a stop string cut it.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from .sse import REPLACEMENT, final_text

try:
    from tokenizers.decoders import DecodeStream
except ImportError:                                  # tokenizers < 0.21
    DecodeStream = None


def special_ids(tokenizer: Any) -> set[int]:
    """The ids `decode(skip_special_tokens=True)` drops: all added tokens marked special (e.g. SmolLM2's
    <repo_name>), which `all_special_ids` (bos/eos/unk/pad only) misses.

    定义于 第10章 §10.2
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i for i, t in added.items() if getattr(t, "special", False)} | set(tokenizer.all_special_ids)


class _OffsetDecoder:
    """vLLM's prefix/read-offset incremental decode: `step(ids)` → the text the ids added ("" while a
    character is unfinished). Only tokens[prefix_offset:] are decoded, a window of a few tokens."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skipped = special_ids(tokenizer) if skip_special_tokens else set()
        self.tokens: list[str] = []
        self.prefix_offset = self.read_offset = 0

    def step(self, token_ids: Sequence[int]) -> str:
        self.tokens += self.tokenizer.convert_ids_to_tokens([i for i in token_ids if i not in self.skipped])
        prefix = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:self.read_offset])
        text = self.tokenizer.convert_tokens_to_string(self.tokens[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return text[len(prefix):]
        return ""


class StreamingDetokenizer:
    """Text deltas of one growing completion, each token decoded once. `push(ids)` returns the new
    safe text (maybe ""); `finish(stop_reason)` the rest. Same interface as lab 10's version.

    定义于 第10章 §10.2
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, stop: Iterable[str] = (),
                 use_decode_stream: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.stop = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if use_decode_stream and DecodeStream is not None and backend is not None:
            stream = DecodeStream(skip_special_tokens=skip_special_tokens)
            self._decode = lambda ids: "".join(stream.step(backend, i) or "" for i in ids)
            self.method = "DecodeStream"
        else:
            self._decode = _OffsetDecoder(tokenizer, skip_special_tokens).step
            self.method = "offsets"
        self.token_ids: list[int] = []
        self.pending = ""                  # decoded, not handed out yet (<= holdback + the newest text)
        self.sent: list[str] = []
        self.num_sent_chars = 0
        self.stopped = False

    def push(self, token_ids: Sequence[int]) -> str:
        self.token_ids.extend(token_ids)
        if self.stopped:
            return ""
        self.pending += self._decode(token_ids)
        end = len(self.pending) - self.holdback
        for stop in self.stop:                                # the stop string itself is never sent
            found = self.pending.find(stop)
            if found >= 0:
                end, self.stopped = min(end, found), True
        if end <= 0:
            return ""
        delta, self.pending = self.pending[:end], self.pending[end:]
        self.sent.append(delta)
        self.num_sent_chars += len(delta)
        return delta

    @property
    def text(self) -> str:
        """What was handed out so far."""
        return "".join(self.sent)

    def finish(self, stop_reason: int | str | None = None) -> str:
        full = final_text(self.tokenizer, self.token_ids, self.skip_special_tokens, stop_reason)
        sent = self.text
        if not full.startswith(sent):     # only when min_tokens kept a stop string from stopping early
            return ""
        delta = full[len(sent):]
        self.sent, self.num_sent_chars, self.pending = [full], len(full), ""
        return delta
