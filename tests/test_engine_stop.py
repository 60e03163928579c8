"""Stop strings are found on a bounded tail of the output (engine/stop.py) yet give exactly what
the old check gave: decode the whole output after every token, cut at the first stop found."""
import random

import pytest

from common.engine.sampling_params import SamplingParams
from common.engine.sequence import Sequence
from common.engine.stop import StopChecker
from common.models import load_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Then it said: END OF STORY, and left.\n\n###\nmore text",
    "你好，世界！这是一个测试：停止字符串可以跨越多个 token。🙂🙃 表情也会被拆成字节。结束了吗？还没有。",
    "def f(x):\n    return x * 2  # </code> marks the end\nprint(f(21))\n</code>\nafter",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def full_redecode(tok, output_ids, params, eos=None):
    """The old engine's check, token by token: (tokens consumed, text, stop) at the first hit."""
    for i in range(1, len(output_ids) + 1):
        text = tok.decode(output_ids[:i], skip_special_tokens=params.skip_special_tokens)
        for stop in params.stop_list:
            if stop in text:
                return i, text[:text.index(stop)], stop
    return None


def tail_checker(tok, output_ids, params):
    checker = StopChecker(eos_token_id=None, max_model_len=1 << 20, tokenizer=tok)
    seq = Sequence(0, "0", 0, [1], params)
    for i, token in enumerate(output_ids, start=1):
        seq.output_ids.append(token)
        if checker.check(seq):
            return (i, seq.text, seq.stop_reason) if seq.finish_reason == "stop" else None
    return None


def test_tail_check_equals_full_redecode_on_multi_token_stops(tok, rng_seed):
    rnd = random.Random(rng_seed)
    cases = 0
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        full = tok.decode(ids)
        for _ in range(40):
            # a stop string that spans several tokens: a random substring of 2..12 characters
            start = rnd.randrange(0, len(full) - 12)
            stop = full[start:start + rnd.randint(2, 12)]
            if "\ufffd" in stop or not stop.strip():
                continue
            decoy = rnd.choice(["never-in-text", "ZZZ", stop[::-1] + "@"])
            params = SamplingParams(stop=[decoy, stop], max_tokens=None)
            expected = full_redecode(tok, ids, params)
            assert expected is not None
            assert tail_checker(tok, ids, params) == expected, (stop, expected)
            cases += len(tok.encode(stop, add_special_tokens=False)) >= 2   # spans a token boundary
    assert cases >= 40


def test_stop_spanning_token_boundary_and_split_utf8(tok):
    ids = tok.encode(TEXTS[1], add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)                       # some characters are split over tokens
    for stop in ["🙂🙃", "停止字符串", "跨越多个 token"]:
        params = SamplingParams(stop=stop, max_tokens=None)
        got = tail_checker(tok, ids, params)
        assert got == full_redecode(tok, ids, params)
        assert got[2] == stop and stop not in got[1] and TEXTS[1].startswith(got[1])


def test_tail_is_bounded(tok):
    """The decode per token covers stop_tail_tokens tokens, not the whole output."""
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tok.encode(TEXTS[0] * 20, add_special_tokens=False)
    params = SamplingParams(stop="never-in-this-text", max_tokens=None)
    checker = StopChecker(None, 1 << 20, Counting())
    seq = Sequence(0, "0", 0, [1], params)
    for token in ids:
        seq.output_ids.append(token)
        assert not checker.check(seq)
    assert len(ids) > 10 * params.stop_tail_tokens
    assert max(calls) == params.stop_tail_tokens == len("never-in-this-text") + 8
