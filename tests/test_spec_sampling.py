"""Speculative sampling leaves the target distribution unchanged: checked empirically on small
vocabularies with a total-variation threshold, and shown to catch a broken acceptance rule."""
import pytest
import torch

from common.spec import rejection_step, residual_distribution, speculative_verify

V = 6
N = 20_000
# Monte-Carlo noise of the TV distance with N samples over V outcomes is about 0.5*sum sqrt(p(1-p)/N)*0.8
# ~ 0.006 here; 0.02 is > 3x that, while the broken rules below are off by ~ 0.15.
TV_THRESHOLD = 0.02


def tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - p).abs().sum())


def distributions(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(2.0 * torch.randn(V, generator=gen), 0)
    q = torch.softmax(2.0 * torch.randn(V, generator=gen), 0)
    return p, q


def sample_one_position(step, p, q, n, seed):
    """Draw x ~ q, run the acceptance step, count what comes out."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.multinomial(q, n, replacement=True, generator=gen).tolist()
    us = torch.rand(n, generator=gen).tolist()
    counts = torch.zeros(p.numel())
    for x, u in zip(xs, us):
        counts[step(p, q, x, u, gen)[1]] += 1
    return counts


def broken_resample_from_p(p, q, x, u, gen):
    """A plausible bug: on rejection draw from p instead of the residual max(0, p - q)."""
    if u * float(q[x]) < float(p[x]):
        return True, x
    return False, int(torch.multinomial(p, 1, generator=gen))


def broken_accept_ratio(p, q, x, u, gen):
    """Another: accept with probability p(x) instead of min(1, p(x)/q(x))."""
    if u < float(p[x]):
        return True, x
    return False, int(torch.multinomial(residual_distribution(p, q), 1, generator=gen))


@pytest.mark.parametrize("seed", [0, 1])
def test_rejection_step_keeps_target_distribution(seed):
    p, q = distributions(seed)
    assert tv(sample_one_position(rejection_step, p, q, N, seed), p) < TV_THRESHOLD


@pytest.mark.parametrize("broken", [broken_resample_from_p, broken_accept_ratio])
def test_broken_rules_are_detected(broken):
    p, q = distributions(1)  # a p/q pair far apart (TV(p, q) ~ 0.6): both bugs shift the output by ~0.15
    counts = sample_one_position(broken, p, q, N, 1)
    assert tv(counts, p) > TV_THRESHOLD, f"{broken.__name__} slipped through the distribution test"


def test_multi_token_draft_keeps_joint_distribution():
    """A Markov-chain 'target' P[prev] and 'drafter' Q[prev] with k=3 drafts: the first two emitted
    tokens must follow the target's joint law P[a, b] = p(a | s) p(b | a), over V*V outcomes."""
    gen = torch.Generator().manual_seed(3)
    P = torch.softmax(1.5 * torch.randn(V, V, generator=gen), -1)
    Q = torch.softmax(1.5 * torch.randn(V, V, generator=gen), -1)
    start, k = 0, 3
    counts = torch.zeros(V, V)
    for _ in range(N):
        draft, prev = [], start
        for _ in range(k):
            prev = int(torch.multinomial(Q[prev], 1, generator=gen))
            draft.append(prev)
        context = [start] + draft
        p_rows = torch.stack([P[t] for t in context])          # row i predicts the token after context[i]
        q_rows = torch.stack([Q[t] for t in context[:-1]])
        n, nxt = speculative_verify(p_rows, q_rows, torch.tensor(draft), gen)
        emitted = draft[:n] + [nxt]
        if len(emitted) < 2:  # rejected at once: the next token comes from the next round
            emitted.append(int(torch.multinomial(P[emitted[0]], 1, generator=gen)))
        counts[emitted[0], emitted[1]] += 1
    joint = P[start][:, None] * P
    assert tv(counts.flatten(), joint.flatten()) < 0.03  # V*V = 36 outcomes: noise ~ 0.01


def test_residual_and_errors():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)
    with pytest.raises(ValueError, match="q\\(x\\) = 0"):
        rejection_step(p, torch.tensor([0.0, 0.5, 0.5]), 0, 0.5)
    with pytest.raises(ValueError, match="k\\+1"):
        speculative_verify(torch.ones(2, 3) / 3, torch.ones(2, 3) / 3, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="uniform"):
        rejection_step(p, q, 0, 1.5)
