"""Lab 9 tests: greedy verification against a brute-force oracle, the rejection step against the
target distribution (total variation < 0.02 over 20k seeded samples), the expected-tokens formula
against simulation."""
import pytest
import torch

from common.model.generate import greedy_generate
from common.model.llama import Llama, LlamaConfig
from common.spec import NgramDrafter, speculative_generate
import common.spec.decode as decode_module


def oracle_verify(logits: torch.Tensor, draft: list[int]) -> tuple[int, int]:
    n = 0
    while n < len(draft) and int(logits[n].argmax()) == draft[n]:
        n += 1
    return n, int(logits[n].argmax())


def test_greedy_verify_matches_oracle(impl):
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(0, 6, (1,), generator=gen))
        logits = torch.randn(k + 1, 7, generator=gen)
        best = logits.argmax(-1)
        draft = [int(best[i]) if torch.rand(1, generator=gen) < 0.7 else int(torch.randint(0, 7, (1,), generator=gen))
                 for i in range(k)]
        n, token = impl.greedy_verify(logits, torch.tensor(draft, dtype=torch.long))
        assert (int(n), int(token)) == oracle_verify(logits, draft)


def test_greedy_verify_rejects_wrong_shape(impl):
    with pytest.raises(ValueError):
        impl.greedy_verify(torch.randn(3, 5), torch.tensor([1, 2, 3]))


def test_greedy_verify_inside_decoding_loop(impl, monkeypatch):
    """Your verifier inside the library's draft-verify loop must reproduce greedy decoding."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    monkeypatch.setattr(decode_module, "greedy_verify", impl.greedy_verify)
    prompt = [1, 2, 3, 1, 2, 3, 1]
    result = speculative_generate(model, prompt, 20, NgramDrafter(), 3)
    assert result.tokens == greedy_generate(model, prompt, 20)


def test_rejection_step_accept_rule(impl):
    p = torch.tensor([0.1, 0.6, 0.3])
    q = torch.tensor([0.5, 0.2, 0.3])
    assert impl.rejection_step(p, q, 1, 0.99)[0] is True           # p/q = 3 >= 1: always accepted
    assert impl.rejection_step(p, q, 0, 0.19) == (True, 0)         # accepted iff u < 0.1/0.5 = 0.2
    accepted, token = impl.rejection_step(p, q, 0, 0.21, torch.Generator().manual_seed(0))
    assert accepted is False and token == 1                        # residual max(0, p-q) = [0, 0.4, 0]


def test_rejection_step_keeps_target_distribution(impl):
    gen = torch.Generator().manual_seed(5)
    p = torch.softmax(2.0 * torch.randn(6, generator=gen), 0)
    q = torch.softmax(2.0 * torch.randn(6, generator=gen), 0)
    n = 20_000
    xs = torch.multinomial(q, n, replacement=True, generator=gen).tolist()
    us = torch.rand(n, generator=gen).tolist()
    counts = torch.zeros(6)
    for x, u in zip(xs, us):
        counts[int(impl.rejection_step(p, q, x, u, gen)[1])] += 1
    tv = 0.5 * float((counts / n - p).abs().sum())
    assert tv < 0.02, f"total variation {tv:.3f} from the target: the output is not distributed as p"


def test_expected_tokens(impl):
    assert impl.expected_tokens(0.7, 1) == pytest.approx(1.7)
    assert impl.expected_tokens(0.7, 3) == pytest.approx(2.533)
    assert impl.expected_tokens(1.0, 4) == pytest.approx(5.0)
    assert impl.expected_tokens(0.0, 4) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(1)
    accept = torch.rand(100_000, 5, generator=gen) < 0.6
    simulated = float((accept.int().cumprod(1).sum(1) + 1).float().mean())
    assert impl.expected_tokens(0.6, 5) == pytest.approx(simulated, abs=0.02)
    with pytest.raises(ValueError):
        impl.expected_tokens(1.5, 2)
