"""Synthetic request traces with the sharing patterns prefix caches exploit (token ids only).

Seeded and small so that notebooks, tests, vLLM and SGLang all replay exactly the same requests.
Token ids are drawn from 1000..30000 so any Llama-sized vocabulary accepts them.
"""
from __future__ import annotations

import random

LOW, HIGH = 1000, 30000


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(LOW, HIGH) for _ in range(n)]


def shared_system_trace(num_requests: int, system_len: int, user_len: tuple[int, int],
                        seed: int = 0) -> list[list[int]]:
    """One system prompt, then a different user message per request.

    定义于 第6章 §6.7.2
    """
    rng = random.Random(seed)
    system = _tokens(rng, system_len)
    return [system + _tokens(rng, rng.randint(*user_len)) for _ in range(num_requests)]


def rag_trace(num_requests: int, num_docs: int, doc_len: int, question_len: int, seed: int = 0) -> list[list[int]]:
    """Each request = one retrieved document (popular ones more often) + a fresh question.

    定义于 第6章 §6.7.2
    """
    rng = random.Random(seed)
    docs = [_tokens(rng, doc_len) for _ in range(num_docs)]
    weights = [1.0 / (i + 1) for i in range(num_docs)]          # Zipf-like popularity
    return [list(rng.choices(docs, weights)[0]) + _tokens(rng, question_len) for _ in range(num_requests)]


def multi_turn_trace(num_convs: int, turns: int, user_len: int, reply_len: int, system_len: int = 0,
                     seed: int = 0) -> list[list[int]]:
    """Chats: the prompt of turn t is the prompt of turn t-1 + the reply + a new user message.
    Turn-major order: requests [t*num_convs:(t+1)*num_convs] are turn t of every conversation.

    定义于 第6章 §6.7.2
    """
    rng = random.Random(seed)
    system = _tokens(rng, system_len)
    history = [system + _tokens(rng, user_len) for _ in range(num_convs)]
    trace = [list(h) for h in history]
    for _ in range(1, turns):
        for c in range(num_convs):
            history[c] = history[c] + _tokens(rng, reply_len) + _tokens(rng, user_len)
            trace.append(list(history[c]))
    return trace


def agent_trace(num_sessions: int, steps: int, step_len: tuple[int, int], system_len: int = 100,
                retry_prob: float = 0.3, seed: int = 0) -> list[list[int]]:
    """Agent loops: each step appends an action + tool observation of random length (so contexts
    are rarely block-aligned); with `retry_prob` the agent backs up to an earlier point (any token)
    and branches. Sessions are interleaved step by step.

    定义于 第6章 §6.7.2
    """
    rng = random.Random(seed)
    system = _tokens(rng, system_len)
    contexts = [system + _tokens(rng, rng.randint(*step_len)) for _ in range(num_sessions)]
    trace = [list(c) for c in contexts]
    for _ in range(1, steps):
        for s in range(num_sessions):
            ctx = contexts[s]
            if rng.random() < retry_prob and len(ctx) > system_len + 1:
                ctx = ctx[:rng.randint(system_len + 1, len(ctx) - 1)]
            contexts[s] = ctx + _tokens(rng, rng.randint(*step_len))
            trace.append(list(contexts[s]))
    return trace
