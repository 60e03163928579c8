"""Agent prompt builders (common.advanced.context_builder): the prefix-stable builder only appends, the
timestamp builder breaks the first block, the editing builder rewrites history; on our engine the prefix cache
hits exactly the full blocks of the common prefix."""
from __future__ import annotations

import random

import torch

from common.advanced.context_builder import (EditingBuilder, PrefixStableBuilder, TimestampBuilder, agent_trace,
                                             common_prefix_len, stable_json)
from common.models import load_tokenizer

TOOLS = [{"name": "shell_exec", "parameters": {"cmd": "string"}}, {"name": "browser_open", "parameters": {"url": "s"}}]
OBS = [f"observation {i}: " + "light is refracted by the prism. " * 6 for i in range(4)]


def _ids(cls, steps=5):
    tok = load_tokenizer("smollm2-135m")
    tools = random.sample(TOOLS, len(TOOLS))            # the builders must not depend on the given order
    return [tok.encode(p) for p in agent_trace(cls(system="You are an agent.", tools=tools), OBS, steps)]


def test_stable_json_ignores_key_order():
    a = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2}, "b": 1}
    assert stable_json(a) == stable_json(b)


def test_prefix_stable_prompts_extend_each_other():
    ids = _ids(PrefixStableBuilder)
    assert all(ids[t][:len(ids[t - 1])] == ids[t - 1] for t in range(1, len(ids)))
    assert ids == _ids(PrefixStableBuilder)              # deterministic whatever the tool order


def test_timestamp_and_editing_break_the_prefix():
    stamp, edit = _ids(TimestampBuilder), _ids(EditingBuilder)
    assert max(common_prefix_len(stamp[t - 1], stamp[t]) for t in range(1, len(stamp))) < 32
    # from the second step on, an earlier message is rewritten: the previous prompt is no longer a prefix
    assert all(common_prefix_len(edit[t - 1], edit[t]) < len(edit[t - 1]) for t in range(2, len(edit)))


def test_engine_hits_full_blocks_of_common_prefix(tiny):
    from common.engine import LLM, SamplingParams

    llm = LLM(tiny, dtype=torch.float32, block_size=16, enable_prefix_caching=True, num_blocks=256,
              tokenizer=load_tokenizer("smollm2-135m"))
    ids = _ids(PrefixStableBuilder, steps=4)
    cached = [llm.generate([i], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)[0].num_cached_tokens
              for i in ids]
    assert cached[0] == 0
    assert cached[1:] == [(len(ids[t - 1]) // 16) * 16 for t in range(1, len(ids))]
