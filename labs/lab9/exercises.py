"""Lab 9: speculative decoding. Implement the three pieces below, then run `make lab-9`.

The reference solutions live in common/spec/ (read them only after trying).
"""
from __future__ import annotations

import torch


def greedy_verify(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[int, int]:
    """Greedy verification of k draft tokens from ONE target pass.

    target_logits: [k+1, vocab]; row i is the target's prediction for the token after draft position i
    (row 0 predicts draft[0], row k predicts the token after the whole draft).
    draft: [k] token ids (k may be 0).
    Return (n, token): n = how many leading draft tokens equal the target's argmax, and token = the
    target's argmax at row n (the correction after a mismatch, or the bonus token if all k matched).
    Raise ValueError if target_logits does not have exactly k+1 rows.
    """
    # TODO: argmax per row, compare with draft, find the first mismatch
    raise NotImplementedError("greedy_verify")


def rejection_step(p: torch.Tensor, q: torch.Tensor, x: int, u: float,
                   generator: torch.Generator | None = None) -> tuple[bool, int]:
    """One speculative-sampling step at one position.

    p: target distribution [vocab]; q: the drafter's distribution [vocab]; x: the draft token, drawn from q;
    u: a uniform draw in [0, 1). Accept x when u < p(x) / q(x) (probability min(1, p(x)/q(x))) and
    return (True, x). Otherwise return (False, y) with y sampled (torch.multinomial with `generator`)
    from the residual distribution max(0, p - q) / sum(max(0, p - q)).
    """
    # TODO: acceptance test, then the residual distribution and one draw from it
    raise NotImplementedError("rejection_step")


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per target forward pass with k draft tokens, each accepted independently with
    probability alpha: 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)  (k+1 when alpha == 1).
    Raise ValueError when alpha is outside [0, 1] or k < 0.
    """
    # TODO: the geometric sum; mind alpha == 1
    raise NotImplementedError("expected_tokens")
