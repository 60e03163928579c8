"""The closed forms against brute force: the expectation of a simulated geometric acceptance run,
and the book's "70% acceptance gives 1.7 tokens" (true only for k = 1)."""
import pytest
import torch

from common.spec import expected_tokens, fit_alpha, speedup
from common.spec.verify import greedy_verify


def test_expected_tokens_matches_simulation():
    gen = torch.Generator().manual_seed(0)
    for alpha, k in [(0.7, 1), (0.7, 3), (0.5, 5), (0.9, 8)]:
        accept = torch.rand(200_000, k, generator=gen) < alpha
        run = accept.int().cumprod(dim=1).sum(dim=1)          # accepted prefix length
        assert abs(float((run + 1).float().mean()) - expected_tokens(alpha, k)) < 0.02


def test_book_claim_only_for_one_draft_token():
    assert expected_tokens(0.7, 1) == pytest.approx(1.7)
    assert expected_tokens(0.7, 2) == pytest.approx(2.19)
    assert expected_tokens(0.7, 3) == pytest.approx(2.533)
    assert expected_tokens(1.0, 4) == 5.0 and expected_tokens(0.0, 4) == 1.0


def leviathan_improvement(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. 2023, Theorem 3.8 (walltime improvement factor), typed from the paper."""
    return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))


def simulated_speedup(alpha: float, k: int, c: float, verify_cost: float, tokens: int, gen: torch.Generator) -> float:
    """Decode `tokens` tokens speculatively (i.i.d. acceptance, cost k*c + verify_cost per step) vs one per step."""
    produced, cost = 0, 0.0
    while produced < tokens:
        accept = torch.rand(4096, k, generator=gen) < alpha
        steps = accept.int().cumprod(dim=1).sum(dim=1) + 1        # accepted drafts + the target's own token
        produced += int(steps.sum())
        cost += steps.numel() * (k * c + verify_cost)
    return produced / cost


def test_speedup_against_paper_and_simulation(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    for alpha, k, c in [(0.8, 4, 0.0), (0.8, 4, 0.25), (0.6, 3, 0.05), (0.9, 6, 0.1)]:
        assert speedup(alpha, k, c) == pytest.approx(leviathan_improvement(alpha, k, c), rel=1e-9)
        # the Monte Carlo run draws ~10^5 tokens: its mean is within 1 % of the expectation
        assert speedup(alpha, k, c) == pytest.approx(simulated_speedup(alpha, k, c, 1.0, 100_000, gen), rel=0.01)
    assert speedup(0.7, 3, 0.1, verify_cost=2.0) == pytest.approx(
        simulated_speedup(0.7, 3, 0.1, 2.0, 100_000, gen), rel=0.01)


def test_speedup_and_fit():
    assert speedup(0.5, 3, 0.1, verify_cost=3.0) < 1.0        # compute-bound verification stops paying
    for alpha, k in [(0.3, 2), (0.8, 5)]:
        assert fit_alpha(expected_tokens(alpha, k), k) == pytest.approx(alpha, abs=1e-6)


def test_theory_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_tokens(1.2, 3)
    with pytest.raises(ValueError):
        speedup(0.5, -1, 0.1)
    with pytest.raises(ValueError):
        fit_alpha(9.0, 3)
    with pytest.raises(ValueError):
        greedy_verify(torch.zeros(3, 5), torch.tensor([1, 2, 3]))
