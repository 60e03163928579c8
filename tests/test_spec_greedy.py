"""Greedy speculative decoding must reproduce the target's greedy output token for token (fp32),
for every drafter and several k; bad input must raise a clear error."""
import pytest
import torch

from common.model.generate import greedy_generate
from common.model.kv_cache import KVCache
from common.model.llama import Llama, LlamaConfig
from common.models import is_cached, load_model
from common.spec import NgramDrafter, QuantizedDrafter, SelfDraftDrafter, speculative_generate, truncated_model

SMALL = LlamaConfig(vocab_size=24, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads; on a shared 2-core machine they only lose."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_model() -> Llama:
    """A random model with a small vocabulary: its output varies, and drafts are sometimes right."""
    torch.manual_seed(0)
    return Llama(SMALL).eval()


def drafters(model: Llama):
    return [NgramDrafter(max_n=3), NgramDrafter(max_n=1), SelfDraftDrafter(model, 1), SelfDraftDrafter(model, 3),
            QuantizedDrafter(model, 8), QuantizedDrafter(model, 4, granularity=32)]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_equals_target_small_vocab(small_model, k):
    gen = torch.Generator().manual_seed(k)
    for trial in range(2):
        prompt = torch.randint(0, SMALL.vocab_size, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen)
        reference = greedy_generate(small_model, prompt, 20)
        for drafter in drafters(small_model):
            result = speculative_generate(small_model, prompt, 20, drafter, k)
            assert result.tokens == reference, (drafter.name, k, trial)
            assert result.proposed >= result.accepted
            assert len(result.tokens) == 1 + sum(result.accepted_per_step) + result.target_steps


def test_some_drafts_accepted_and_some_rejected(small_model):
    """The equality test above is only meaningful if both verification branches are exercised."""
    prompt = torch.tensor([3, 5, 7, 3, 5, 7, 3, 5])
    total_acc = total_rej = 0
    for drafter in drafters(small_model):
        result = speculative_generate(small_model, prompt, 40, drafter, 4)
        total_acc += result.accepted
        total_rej += result.rejections
    assert total_acc > 0 and total_rej > 0


def test_greedy_equals_target_registry_tiny():
    model = load_model("tiny")
    prompt = list(range(100, 130)) + list(range(100, 110))
    reference = greedy_generate(model, prompt, 24)
    for drafter in [NgramDrafter(), SelfDraftDrafter(model, 1), QuantizedDrafter(model, 4, granularity=64)]:
        for k in (2, 5):
            assert speculative_generate(model, prompt, 24, drafter, k).tokens == reference


def test_eos_stops_like_greedy(small_model):
    prompt = [1, 2, 3, 4]
    free = greedy_generate(small_model, prompt, 30)
    eos = free[len(free) // 2]
    reference = greedy_generate(small_model, prompt, 30, eos_token_id=eos)
    for drafter in drafters(small_model):
        assert speculative_generate(small_model, prompt, 30, drafter, 3, eos_token_id=eos).tokens == reference


def test_quantized_drafter_is_a_close_copy(small_model):
    """INT8 per-channel: the draft's logits stay close to the target's and its weights are separate."""
    drafter = QuantizedDrafter(small_model, 8)
    ids = torch.randint(0, SMALL.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = small_model(ids), drafter.model(ids)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert isinstance(small_model.layers[0].mlp.up_proj, torch.nn.Linear)  # the target is untouched


def test_truncated_model_matches_manual_forward(small_model):
    """The self-draft = first m layers + final norm + LM head, sharing the target's weights."""
    draft = truncated_model(small_model, 2)
    assert draft.lm_head.weight.data_ptr() == small_model.lm_head.weight.data_ptr()
    ids = torch.randint(0, SMALL.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        positions = torch.arange(9)
        cos, sin = small_model.rotary(positions, small_model.dtype)
        x = small_model.embed_tokens(ids)
        for layer in small_model.layers[:2]:
            x = layer(x, cos, sin, None)
        manual = small_model.lm_head(small_model.norm(x))
        cached = draft(ids, cache=KVCache(draft.config, 1, 16))
        torch.testing.assert_close(draft(ids), manual, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached, manual, rtol=1e-5, atol=1e-5)


def test_ngram_lookup():
    d = NgramDrafter(max_n=2)
    assert d.lookup([1, 2, 3, 4, 9, 1, 2], 2) == [3, 4]
    assert d.lookup([1, 2, 3, 1, 2, 3, 1, 2], 3) == [3, 1, 2]   # a full-length match beats a cut-short recent one
    assert d.lookup([5, 6, 7], 3) == []
    assert d.lookup([7, 7], 4) == [7]


def test_bad_input_raises(small_model):
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(small_model, [1, 2], 5, NgramDrafter(), -1)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(small_model, [1, 2], 5, NgramDrafter(), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt"):
        speculative_generate(small_model, [], 5, NgramDrafter(), 2)
    with pytest.raises(ValueError, match="num_layers"):
        SelfDraftDrafter(small_model, 9)
    with pytest.raises(ValueError, match="bits"):
        QuantizedDrafter(small_model, 3)
    with pytest.raises(ValueError, match="min_n"):
        NgramDrafter(max_n=1, min_n=2)


@pytest.mark.skipif(not is_cached("smollm2-135m"), reason="smollm2-135m not converted (make setup)")
def test_greedy_equals_target_smollm2():
    from common.models import chat_prompt_ids
    model = load_model("smollm2-135m")
    prompt = chat_prompt_ids("smollm2-135m", "List the numbers 1, 2, 3, 4, 5, 6 separated by commas.")
    reference = greedy_generate(model, prompt, 12)
    for drafter in [NgramDrafter(), SelfDraftDrafter(model, 6)]:
        assert speculative_generate(model, prompt, 12, drafter, 3).tokens == reference
