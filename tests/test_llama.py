"""The from-scratch Llama must match transformers: fp32 logits within 1e-4, identical greedy tokens."""
import pytest
import torch

from common.model.generate import greedy_generate
from common.model.kv_cache import KVCache
from common.model.llama import ContextLengthError
from common.models import chat_prompt_ids, load_tokenizer

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a KV cache is.",
    "List three prime numbers.",
    "How do I reverse a list in Python?",
]


@pytest.mark.parametrize("seq_len", [1, 5, 64, 257])
def test_logits_match_transformers(model_pair, rng, seq_len):
    name, ours, ref = model_pair
    ids = torch.randint(0, ours.config.vocab_size, (2, seq_len), generator=rng)
    with torch.inference_mode():
        diff = (ours(ids) - ref(ids).logits).abs().max().item()
    assert diff < 1e-4, f"{name}: max |Δlogit| = {diff:.2e} at seq_len={seq_len}"


def test_cached_decode_matches_full_forward(model_pair, rng):
    """Prefill + step-by-step decode through the KV cache = one forward over the whole sequence."""
    _, ours, _ = model_pair
    ids = torch.randint(0, ours.config.vocab_size, (1, 24), generator=rng)
    cache = KVCache(ours.config, 1, 32)
    with torch.inference_mode():
        full = ours(ids)
        steps = [ours(ids[:, :16], cache=cache)] + [ours(ids[:, i:i + 1], cache=cache) for i in range(16, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4


def test_greedy_chat_generation_matches_transformers(model_pair):
    name, ours, ref = model_pair
    eos = load_tokenizer(name).eos_token_id
    for prompt in CHAT_PROMPTS:
        ids = chat_prompt_ids(name, prompt)
        mine = greedy_generate(ours, ids, max_new_tokens=64, eos_token_id=eos)
        with torch.inference_mode():
            theirs = ref.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
        assert mine == theirs, f"{name}: {prompt!r} diverged"


def test_bf16_model_runs_and_mostly_agrees(rng):
    from common.models import load_model

    fp32, bf16 = load_model("smollm2-135m"), load_model("smollm2-135m", dtype=torch.bfloat16)
    ids = torch.randint(0, fp32.config.vocab_size, (1, 32), generator=rng)
    with torch.inference_mode():
        a, b = fp32(ids).argmax(-1), bf16(ids).float().argmax(-1)
    assert bf16.dtype == torch.bfloat16
    assert (a == b).float().mean().item() > 0.8


def test_context_length_errors(tiny):
    model = tiny
    too_long = model.config.max_position_embeddings + 1
    with pytest.raises(ContextLengthError, match="context"):
        model(torch.zeros(1, too_long, dtype=torch.long))
    with pytest.raises(ContextLengthError, match="context"):
        greedy_generate(model, [1] * (too_long - 10), max_new_tokens=20)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, [1, 2, 3], max_new_tokens=0)
