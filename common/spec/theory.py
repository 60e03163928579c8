"""Closed forms of speculative decoding (Leviathan et al., 2023), under the usual model that each
draft token is accepted independently with probability alpha.

With k draft tokens a target step yields the accepted prefix plus one token of its own, so
E[tokens per target step] = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha).
"""
from __future__ import annotations


def _check(alpha: float, k: int) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"acceptance rate alpha must be in [0, 1], got {alpha}")
    if k < 0 or int(k) != k:
        raise ValueError(f"k (draft tokens per step) must be a non-negative integer, got {k}")


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens produced per target forward pass with k draft tokens (k=0: plain decoding).

    定义于 第9章 §9.5
    """
    _check(alpha, k)
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def speedup(alpha: float, k: int, c: float, verify_cost: float = 1.0) -> float:
    """Predicted wall-clock speedup over plain decoding.

    c: cost of one draft step relative to one target decode step; verify_cost: cost of the
    (k+1)-token verification pass relative to a 1-token decode (about 1 while decoding is
    memory-bound, growing once the batch makes it compute-bound).

    定义于 第9章 §9.5
    """
    _check(alpha, k)
    if c < 0 or verify_cost <= 0:
        raise ValueError(f"costs must be c >= 0 and verify_cost > 0, got c={c}, verify_cost={verify_cost}")
    return expected_tokens(alpha, k) / (k * c + verify_cost)


def fit_alpha(tokens_per_step: float, k: int, tol: float = 1e-10) -> float:
    """The alpha whose expected_tokens(alpha, k) equals a measured mean (bisection; it is monotone).

    定义于 第9章 §9.5
    """
    _check(0.0, k)
    if not 1.0 <= tokens_per_step <= k + 1:
        raise ValueError(f"tokens per step must lie in [1, k+1] = [1, {k + 1}], got {tokens_per_step}")
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < tokens_per_step else (lo, mid)
    return (lo + hi) / 2
