"""The target's verdict on k draft tokens, from ONE forward pass over [last token, draft_1..draft_k].

Row i of the target's probabilities p[i] is the target's distribution for the token after draft
position i (row 0 predicts draft_1, row k predicts the token after the whole draft).

Greedy: accept draft tokens while they equal the target's argmax; the first mismatch is replaced
by the target's argmax, and if all k match the target adds its own (k+1)-th token. The output is
exactly the target's greedy output.

Sampling: accept x ~ q with probability min(1, p(x)/q(x)); on rejection draw from the residual
norm(max(0, p - q)). Then P(out = x) = min(q(x), p(x)) + (1 - sum_y min(q(y), p(y))) * residual(x)
= min(q, p)(x) + max(0, p - q)(x) = p(x): the target distribution, whatever the drafter.
"""
from __future__ import annotations

import torch


def _check_rows(p: torch.Tensor, draft: torch.Tensor) -> None:
    if p.dim() != 2 or draft.dim() != 1:
        raise ValueError(f"expected target rows [k+1, vocab] and draft [k], "
                         f"got {tuple(p.shape)} and {tuple(draft.shape)}")
    if p.shape[0] != draft.shape[0] + 1:
        raise ValueError(f"the target must score k+1 = {draft.shape[0] + 1} positions, got {p.shape[0]} rows")
    if draft.numel() and (int(draft.min()) < 0 or int(draft.max()) >= p.shape[1]):
        raise ValueError(f"draft token ids must lie in [0, {p.shape[1]})")


def greedy_verify(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[int, int]:
    """(number of accepted draft tokens n, the target's token at position n).

    定义于 第9章 §9.2
    """
    draft = torch.as_tensor(draft, dtype=torch.long, device=target_logits.device).reshape(-1)
    _check_rows(target_logits, draft)
    choice = target_logits.argmax(dim=-1)
    mismatch = (choice[:-1] != draft).nonzero()
    n = int(mismatch[0]) if mismatch.numel() else draft.numel()
    return n, int(choice[n])


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); where p == q (nothing to correct) it is p itself.

    定义于 第9章 §9.2
    """
    diff = (p - q).clamp_min(0)
    total = diff.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, diff / total.clamp_min(torch.finfo(diff.dtype).tiny), p)


def rejection_step(p: torch.Tensor, q: torch.Tensor, x: int, u: float,
                   generator: torch.Generator | None = None) -> tuple[bool, int]:
    """One position: accept draft token x (drawn from q) iff u < p(x)/q(x), i.e. with probability
    min(1, p(x)/q(x)); otherwise sample a replacement from the residual. Returns (accepted, token).

    定义于 第9章 §9.2
    """
    if p.shape != q.shape or p.dim() != 1:
        raise ValueError(f"p and q must be 1-D distributions of one size, got {tuple(p.shape)} and {tuple(q.shape)}")
    if not 0 <= x < p.numel():
        raise ValueError(f"draft token {x} outside the vocabulary of {p.numel()}")
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u must be a uniform draw in [0, 1), got {u}")
    if q[x] <= 0:
        raise ValueError(f"the drafter proposed token {x} with q(x) = 0: q must be the distribution x was drawn from")
    if u * float(q[x]) < float(p[x]):
        return True, x
    return False, int(torch.multinomial(residual_distribution(p, q), 1, generator=generator))


def speculative_verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, int]:
    """Speculative sampling over k draft tokens: p [k+1, vocab] target probabilities, q [k, vocab]
    the drafter's. Returns (accepted n, next token: a residual sample or, if all pass, a draw from p[k]).

    定义于 第9章 §9.2
    """
    draft = torch.as_tensor(draft, dtype=torch.long, device=p.device).reshape(-1)
    _check_rows(p, draft)
    if q.shape != (draft.numel(), p.shape[1]):
        raise ValueError(f"q must be [k, vocab] = [{draft.numel()}, {p.shape[1]}], got {tuple(q.shape)}")
    for i, x in enumerate(draft.tolist()):
        u = float(torch.rand((), generator=generator, device=generator.device if generator else "cpu"))
        accepted, token = rejection_step(p[i], q[i], x, u, generator)
        if not accepted:
            return i, token
    return draft.numel(), int(torch.multinomial(p[-1], 1, generator=generator))
