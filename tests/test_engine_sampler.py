"""The batched sampler against brute-force per-row filtering and against itself under seeds."""
import torch

from common.engine.sampler import SamplingBatch, apply_top_k_top_p, sample


def _batch(n, temperature=1.0, top_k=0, top_p=1.0, seeds=None):
    gens = [None if s is None else torch.Generator().manual_seed(s) for s in (seeds or [None] * n)]
    return SamplingBatch(torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p),
                         gens, [[] for _ in range(n)])


def _brute_keep(row: torch.Tensor, k: int, p: float) -> set[int]:
    order = row.argsort(descending=True).tolist()
    if k:
        order = order[:k]
    if p >= 1.0:                     # top_p = 1 disables the nucleus filter, as in vLLM
        return set(order)
    probs = torch.softmax(row[order].double(), -1)
    keep, mass = [], 0.0
    for tok, pr in zip(order, probs.tolist()):
        keep.append(tok)
        mass += pr
        if mass >= p:
            break
    return set(keep)


def test_top_k_top_p_mask_matches_brute_force(rng):
    logits = torch.randn(6, 50, generator=rng) * 3
    top_k = torch.tensor([0, 1, 5, 0, 10, 3])
    top_p = torch.tensor([0.5, 1.0, 0.9, 1.0, 0.3, 0.99])
    masked = apply_top_k_top_p(logits, top_k, top_p)
    for i in range(6):
        kept = set(torch.isfinite(masked[i]).nonzero().flatten().tolist())
        assert kept == _brute_keep(logits[i], int(top_k[i]), float(top_p[i]))
        assert torch.equal(masked[i][list(kept)], logits[i][list(kept)])


def test_greedy_and_top1_are_argmax(rng):
    logits = torch.randn(5, 100, generator=rng)
    assert torch.equal(sample(logits, _batch(5, temperature=0.0)), logits.argmax(-1))
    assert torch.equal(sample(logits, _batch(5, top_k=1)), logits.argmax(-1))


@torch.inference_mode()
def test_greedy_bf16_batch_takes_the_same_tokens_as_the_fp32_path(rng):
    # the all-greedy fast path reads bf16 logits in place (C++ argmax on CPU); ties go to the first index
    logits = torch.randint(-3, 3, (7, 1000), generator=rng).bfloat16()
    logits[3] = (torch.randn(1000, generator=rng) * 5).bfloat16()
    assert torch.equal(sample(logits, _batch(7, temperature=0.0)), logits.float().argmax(-1))
    banned = _batch(7, temperature=0.0)              # banned ids leave the fast path and are still honoured
    banned.banned = [[int(t)] for t in logits.float().argmax(-1)]
    assert not (sample(logits, banned) == logits.float().argmax(-1)).any()


def test_seeded_rows_do_not_depend_on_batch_mates(rng):
    logits = torch.randn(4, 100, generator=rng)
    alone = sample(logits[:1], _batch(1, seeds=[7]))
    together = sample(logits, _batch(4, seeds=[7, None, None, 3]))
    assert alone[0] == together[0]


def test_sampling_frequencies_follow_softmax(rng):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    tokens = sample(logits, _batch(20000, temperature=1.0))
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)
    banned = _batch(20000)
    banned.banned = [[0]] * 20000
    assert int((sample(logits, banned) == 0).sum()) == 0


def test_decode_attention_matches_sdpa(rng):
    """The engine's batched single-query attention against torch SDPA with the same mask (fp32)."""
    from common.model.attention import sdpa
    from common.paged.decode_attention import decode_attention

    B, Hq, Hkv, D, L = 5, 9, 3, 16, 40
    q = torch.randn(B, Hq, D, generator=rng)
    k = torch.randn(B, L, Hkv, D, generator=rng)
    v = torch.randn(B, L, Hkv, D, generator=rng)
    lens = torch.randint(1, L + 1, (B,), generator=rng)
    valid = torch.arange(L)[None] < lens[:, None]
    ref = sdpa(q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2), mask=valid[:, None, None, :]).squeeze(2)
    got = decode_attention(q.transpose(0, 1), k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3), valid)
    assert torch.allclose(got.transpose(0, 1), ref, atol=1e-5)
