"""The server's streaming detokenizer (common.serve.detokenize): joined deltas equal one full decode
(`sse.final_text`) on long random outputs and on text whose characters span several byte-level
tokens (emoji, CJK), pushed in random chunk sizes, with and without stop strings; both methods
(tokenizers' DecodeStream and vLLM's prefix/read offsets). And it decodes each token once: the
work per push does not grow with the output length."""
import random

import pytest

from common.models import load_tokenizer
from common.serve import detokenize
from common.serve.detokenize import StreamingDetokenizer
from common.serve.sse import IncrementalDetokenizer, final_text

METHODS = {"DecodeStream": True, "offsets": False}
UTF8_TEXT = "héllo 世界 🤖🎉 naïve 日本語のテキスト 👩‍👩‍👧 ok. 中文标点，还有 emoji 🚀🚀 end"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _chunks(ids: list[int], rng: random.Random):
    i = 0
    while i < len(ids):
        k = rng.randint(1, 4)
        yield ids[i:i + k]
        i += k


def _stream(tok, ids, rng, stop=(), stop_reason=None, use_decode_stream=True) -> tuple[str, StreamingDetokenizer]:
    detok = StreamingDetokenizer(tok, True, stop, use_decode_stream=use_decode_stream)
    out = "".join(detok.push(c) for c in _chunks(ids, rng)) + detok.finish(stop_reason)
    return out, detok


def test_decode_stream_is_available_in_the_pinned_tokenizers(tok):
    assert detokenize.DecodeStream is not None
    assert StreamingDetokenizer(tok).method == "DecodeStream"
    assert StreamingDetokenizer(tok, use_decode_stream=False).method == "offsets"


@pytest.mark.parametrize("method", METHODS)
def test_random_long_outputs_equal_a_full_decode(tok, rng_seed, method):
    rng = random.Random(rng_seed)
    for _ in range(20):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(200, 600))]
        out, detok = _stream(tok, ids, rng, use_decode_stream=METHODS[method])
        assert out == final_text(tok, ids) == detok.text


@pytest.mark.parametrize("method", METHODS)
def test_utf8_split_characters_never_leak_replacement_chars(tok, rng_seed, method):
    rng = random.Random(rng_seed)
    ids = tok.encode(UTF8_TEXT * 3, add_special_tokens=False)
    assert len(ids) > len(UTF8_TEXT) // 2
    detok = StreamingDetokenizer(tok, use_decode_stream=METHODS[method])
    deltas = [detok.push(c) for c in _chunks(ids, rng)]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.finish() == UTF8_TEXT * 3
    assert "" in deltas, "some pushes ended inside a character and had to wait"


@pytest.mark.parametrize("method", METHODS)
def test_stop_strings_cut_like_the_full_text_and_never_leak(tok, rng_seed, method):
    rng = random.Random(rng_seed)
    text = UTF8_TEXT + " STOP here 世界 again"
    ids = tok.encode(text, add_special_tokens=False)
    for stop in (["STOP"], ["世界 a", "zzz"], ["🎉 na"], ["end STOP", "STOP h"]):
        reason = next(s for s in sorted(stop, key=text.find) if s in text)
        out, detok = _stream(tok, ids, rng, stop, reason, METHODS[method])
        assert out == final_text(tok, ids, True, reason) == text[:text.index(reason)], stop
        assert not any(s in out for s in stop)
    # the same as lab 10's simple version
    simple = IncrementalDetokenizer(tok, True, ["STOP"])
    assert "".join(simple.push(c) for c in _chunks(ids, rng)) + simple.finish("STOP") == _stream(
        tok, ids, rng, ["STOP"], "STOP")[0]


class CountingTokenizer:
    """Wraps a tokenizer and counts the token ids its decode paths see."""

    def __init__(self, tok):
        self.tok, self.decoded_ids = tok, 0
        self.all_special_ids, self.added_tokens_decoder = tok.all_special_ids, tok.added_tokens_decoder

    def decode(self, ids, **kw):
        self.decoded_ids += len(ids)
        return self.tok.decode(ids, **kw)

    def convert_ids_to_tokens(self, ids, **kw):
        return self.tok.convert_ids_to_tokens(ids, **kw)

    def convert_tokens_to_string(self, tokens):
        self.decoded_ids += len(tokens)
        return self.tok.convert_tokens_to_string(tokens)


def test_work_per_push_does_not_grow_with_the_output(tok, rng_seed):
    """Lab 10's version decodes everything on each push (quadratic); the offsets method decodes a
    window of a few tokens per push (linear); DecodeStream never calls decode until finish."""
    rng = random.Random(rng_seed)
    ids = [rng.randrange(len(tok)) for _ in range(1000)]
    counted = {}
    for name, make in {"simple": lambda t: IncrementalDetokenizer(t),
                       "offsets": lambda t: StreamingDetokenizer(t, use_decode_stream=False)}.items():
        wrapped = CountingTokenizer(tok)
        detok = make(wrapped)
        for i in ids:
            detok.push([i])
        counted[name] = wrapped.decoded_ids
    assert counted["simple"] > 400 * len(ids), counted          # ~n²/2
    assert counted["offsets"] < 12 * len(ids), counted           # a window of a few tokens per push
