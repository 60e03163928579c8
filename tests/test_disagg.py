"""PD disaggregation (common.disagg): the K/V hand-off is lossless, and two pinned worker processes
produce exactly the tokens of colocated greedy decoding (fp32), with requests joining a running batch."""
import pytest
import torch

from common.disagg import SharedKVPool, TimedRequest, run_colocated, run_disaggregated
from common.disagg.workers import DecodingRequest, decode_step, prefill
from common.engine import LLM
from common.model.generate import greedy_generate
from common.models import load_model
from common.disagg.transfer import KVHeader


def _workload(rng: torch.Generator, shapes: list[tuple[int, int, float]], vocab: int) -> list[TimedRequest]:
    return [TimedRequest(f"r{i}", tuple(torch.randint(0, vocab, (n,), generator=rng).tolist()), m, a)
            for i, (n, m, a) in enumerate(shapes)]


def test_pool_round_trip_is_exact(tiny, rng):
    pool = SharedKVPool(tiny.config, num_blocks=5, block_size=4, dtype=torch.float32)
    try:
        cfg = tiny.config
        k, v = (torch.randn(cfg.num_hidden_layers, cfg.num_key_value_heads, 13, cfg.head_dim, generator=rng)
                for _ in range(2))
        ids = [3, 0, 4, 1]   # any free blocks, in any order
        nbytes = pool.write(ids, k, v)
        other = SharedKVPool.attach(cfg, pool.spec())   # what a worker sees
        k2, v2 = torch.zeros_like(k), torch.zeros_like(v)
        other.read_into(tuple(ids), 13, k2, v2)
        other.close()
    finally:
        pool.close(unlink=True)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    assert nbytes == 2 * 13 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4


def test_batched_ragged_decode_equals_greedy(tiny, rng):
    """Requests of different lengths in one decode forward give each request its own greedy tokens."""
    prompts = [torch.randint(0, 1000, (n,), generator=rng).tolist() for n in (3, 11, 26)]
    running = []
    for i, ids in enumerate(prompts):
        first, k, v = prefill(tiny, ids)
        shape = (*k.shape[:2], len(ids) + 6, k.shape[-1])
        kk, vv = torch.zeros(shape), torch.zeros(shape)
        kk[:, :, :len(ids)], vv[:, :, :len(ids)] = k, v
        header = KVHeader(str(i), (), len(ids), first, 6, 0.0, 0.0, 0.0, 0)
        running.append(DecodingRequest(header, kk, vv, len(ids), [first]))
    for _ in range(5):
        for req, token in zip(running, decode_step(tiny, running)):
            req.tokens.append(token)
    for ids, req in zip(prompts, running):
        assert req.tokens == greedy_generate(tiny, ids, 6)
        assert req.length == len(ids) + 5   # BatchDecodeCache advanced each request once per step


def test_pool_too_small_is_a_clear_error(rng):
    wl = _workload(rng, [(40, 2, 0.0)], 1000)
    with pytest.raises(ValueError, match="needs 5 blocks"):
        run_disaggregated("tiny", wl, num_blocks=4, block_size=8)


def test_bad_workload_is_refused(rng):
    wl = _workload(rng, [(4, 2, 0.0)], 1000)
    with pytest.raises(ValueError, match="unique"):
        run_disaggregated("tiny", wl + wl)
    with pytest.raises(ValueError, match="max_tokens"):
        run_disaggregated("tiny", [TimedRequest("x", (1, 2), 0)])


def test_disaggregated_equals_colocated_tiny(tiny, rng):
    """Staggered arrivals (requests join a running decode batch), a pool small enough to force the prefill
    worker to wait for returned blocks, and a max_tokens=1 request (finished by the prefill token alone)."""
    wl = _workload(rng, [(5, 8, 0.0), (40, 6, 0.01), (17, 10, 0.02), (3, 1, 0.03), (33, 12, 0.0)], 1000)
    out = run_disaggregated("tiny", wl, "float32", num_blocks=6, block_size=8, ignore_eos=True)
    colocated = run_colocated(LLM(load_model("tiny"), dtype="float32", num_blocks=64), wl, ignore_eos=True)
    for req, got, col in zip(wl, out, colocated):
        want = greedy_generate(tiny, list(req.prompt_ids), req.max_tokens)
        assert got.token_ids == want == col.token_ids, req.request_id
        cfg = tiny.config
        assert got.kv_bytes == 2 * len(req.prompt_ids) * cfg.num_hidden_layers * cfg.num_key_value_heads * \
            cfg.head_dim * 4
        assert len(got.token_times) == req.max_tokens


def test_disaggregated_equals_greedy_smollm2(rng):
    model = load_model("smollm2-135m", torch.float32)
    wl = _workload(rng, [(24, 5, 0.0), (70, 4, 0.0), (9, 6, 0.05)], model.config.vocab_size)
    out = run_disaggregated("smollm2-135m", wl, "float32", fuse=False, ignore_eos=True)
    for req, got in zip(wl, out):
        assert got.token_ids == greedy_generate(model, list(req.prompt_ids), req.max_tokens), req.request_id
