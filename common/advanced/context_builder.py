"""Agent context engineering (§11.1.7, Manus): build every step's prompt so that it extends the last one.

A prefix cache (vLLM's hash of full KV blocks, or our engine's `common.paged.prefix_cache`) reuses KV only up to
the first token that differs from a cached prompt. An agent re-sends its whole context every step, so:
- `PrefixStableBuilder`: a static system prompt (no timestamp), tools sorted by name and serialised with
  deterministic JSON (`sort_keys=True`), and an append-only event log: step t's prompt is a prefix of step t+1's;
- `TimestampBuilder`: the same, but the current time is the first line of the system prompt: nothing is reused;
- `EditingBuilder`: the same, but old observations are rewritten (truncated) as the log grows, and JSON keys
  keep whatever order the dict had: the prompt changes in the middle, reuse stops at the first edit.
All builders render SmolLM2's chat format (`<|im_start|>role ... <|im_end|>`), whose special tokens keep the
tokenisation of earlier messages unchanged when messages are appended.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


def stable_json(obj) -> str:
    """Deterministic JSON: sorted keys, fixed separators, so equal objects give equal bytes (and tokens).

    定义于 第11章 §11.1.7
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _message(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


@dataclass
class PrefixStableBuilder:
    """Static system prompt + sorted tools + append-only log.

    定义于 第11章 §11.1.7
    """
    system: str
    tools: list[dict]
    events: list[tuple[str, object]] = field(default_factory=list)

    def append(self, role: str, content: object) -> None:
        """Add one event (a dict becomes deterministic JSON). Nothing already in the log ever changes."""
        self.events.append((role, content))

    def header(self, step: int) -> str:
        tools = "\n".join(stable_json(t) for t in sorted(self.tools, key=lambda t: t["name"]))
        return _message("system", f"{self.system}\n# Tools\n{tools}")

    def render_event(self, index: int, role: str, content: object, step: int) -> str:
        return _message(role, content if isinstance(content, str) else stable_json(content))

    def render(self, step: int | None = None) -> str:
        """The full prompt for `step` (default: the number of events), ending with the assistant's turn."""
        step = len(self.events) if step is None else step
        body = "".join(self.render_event(i, r, c, step) for i, (r, c) in enumerate(self.events))
        return self.header(step) + body + "<|im_start|>assistant\n"


@dataclass
class TimestampBuilder(PrefixStableBuilder):
    """Puts the current time at the very front of the system prompt (a common anti-pattern).

    定义于 第11章 §11.1.7
    """
    start: datetime = datetime(2026, 1, 22, 9, 0, 0)
    seconds_per_step: int = 37

    def header(self, step: int) -> str:
        now = self.start + timedelta(seconds=self.seconds_per_step * step)
        return f"<|im_start|>system\nCurrent time: {now:%Y-%m-%d %H:%M:%S}\n" + super().header(step)[
            len("<|im_start|>system\n"):]


@dataclass
class EditingBuilder(PrefixStableBuilder):
    """Rewrites history: keeps only the last `keep_full` observations verbatim (older ones are truncated),
    serialises JSON with the dict's own key order, which the agent shuffles (seeded) every step.

    定义于 第11章 §11.1.7
    """
    keep_full: int = 2
    truncate_chars: int = 80
    seed: int = 0

    def render_event(self, index: int, role: str, content: object, step: int) -> str:
        if isinstance(content, dict):
            rng = random.Random(self.seed * 100_003 + step * 1_009 + index)
            keys = list(content)
            rng.shuffle(keys)
            text = json.dumps({k: content[k] for k in keys}, ensure_ascii=False)
        else:
            text = content
        observations = [i for i, (r, _) in enumerate(self.events) if r == "tool"]
        if role == "tool" and index not in observations[-self.keep_full:]:
            text = text[:self.truncate_chars] + " …[truncated]"
        return _message(role, text)


def agent_trace(builder: PrefixStableBuilder, observations: list[str], steps: int) -> list[str]:
    """Drive `builder` through a deterministic agent loop: each step appends a tool call and its observation,
    and the prompt the agent would send at that step is recorded. Returns `steps` prompts.

    定义于 第11章 §11.1.7
    """
    tools_cycle = sorted(t["name"] for t in builder.tools)
    builder.append("user", "Read the attached notes on light and summarise every experiment with its result.")
    prompts = []
    for step in range(steps):
        prompts.append(builder.render(step))
        name = tools_cycle[step % len(tools_cycle)]
        builder.append("assistant", {"tool": name, "arguments": {"path": f"notes/part{step}.txt", "max_chars": 600},
                                     "thought": f"step {step}: read the next part"})
        builder.append("tool", observations[step % len(observations)])
    return prompts


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Tokens two prompts share from the start: the part a prefix cache can reuse.

    定义于 第11章 §11.1.7
    """
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
