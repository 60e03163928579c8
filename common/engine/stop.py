"""When is a sequence done? EOS, a stop token, a stop string, max_tokens or the context length.

Stop strings are looked for in the decoded text of the last `params.stop_tail_tokens` output
tokens only (the longest stop string's UTF-8 length plus a margin: every token is at least one
byte), so the check costs the same at token 10 and at token 10,000 and a whole generation stays
linear. Only when the tail shows a stop string is the whole output decoded once, to cut the text
exactly where a full re-decode would (tests/test_engine_stop.py checks the two agree).
"""
from __future__ import annotations

from typing import Any

from .sequence import Sequence


class StopChecker:
    """Decides after each token whether a sequence is done, and why (the finish_reason).

    定义于 第7章 §7.4.1
    """
    def __init__(self, eos_token_id: int | None, max_model_len: int, tokenizer: Any = None) -> None:
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer

    def check(self, seq: Sequence) -> bool:
        """After `seq` got its newest token: True (with finish_reason/stop_reason set) if it is done."""
        p, token = seq.params, seq.output_ids[-1]
        if len(seq.output_ids) >= p.min_tokens:
            if token == self.eos_token_id and not p.ignore_eos:
                seq.finish_reason = "stop"
                return True
            if token in p.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token
                return True
            if p.stop_list and self.tokenizer is not None and self._stop_string(seq):
                return True
        if len(seq.output_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
            return True
        return False

    def _stop_string(self, seq: Sequence) -> bool:
        p = seq.params
        tail = self.tokenizer.decode(seq.output_ids[-p.stop_tail_tokens:], skip_special_tokens=p.skip_special_tokens)
        if not any(stop in tail for stop in p.stop_list):
            return False
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=p.skip_special_tokens)
        for stop in p.stop_list:
            if stop in text:
                seq.text = text[:text.index(stop)]
                seq.finish_reason, seq.stop_reason = "stop", stop
                return True
        return False
