"""SamplingParams' logprobs and penalties against real references: logprobs equal a transformers
fp32 forward's log_softmax; repetition_penalty equals transformers' RepetitionPenaltyLogitsProcessor
(and HF generate with it, token for token); presence/frequency equal the OpenAI formula."""
import pytest
import torch

from common.engine import LLM, SamplingParams
from common.engine.sampler import Penalties, apply_penalties, token_counts
from common.model.generate import greedy_generate
from common.models import load_hf_model, load_model

LOGPROB_TOL = 1e-4


def _prompts(rng, lengths, vocab=49152):
    return [torch.randint(3, vocab, (n,), generator=rng).tolist() for n in lengths]


@pytest.mark.parametrize("name,num_tokens", [("tiny", 8), ("smollm2-135m", 4)])
def test_logprobs_equal_transformers_fp32(name, num_tokens, rng):
    hf = load_hf_model(name)
    llm = LLM(load_model(name, torch.float32), num_blocks=64, block_size=8)
    prompts = _prompts(rng, [5, 19, 12], hf.config.vocab_size)
    params = [SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True, logprobs=5),
              SamplingParams(temperature=0.8, seed=3, max_tokens=num_tokens, ignore_eos=True, logprobs=0),
              SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True, logprobs=20,
                             repetition_penalty=1.5)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, p, out in zip(prompts, params, outs):
        comp = out.outputs[0]
        assert len(comp.logprobs) == len(comp.token_ids) == num_tokens
        with torch.no_grad():
            ids = torch.tensor([prompt + comp.token_ids[:-1]])
            ref = hf(ids).logits[0, len(prompt) - 1:].float().log_softmax(-1)     # raw: no penalty, no temperature
        for step, (token, entry) in enumerate(zip(comp.token_ids, comp.logprobs)):
            top = ref[step].topk(p.logprobs).indices.tolist()
            assert token in entry and set(top) <= set(entry) and len(entry) <= p.logprobs + 1
            got = torch.tensor(list(entry.values()))
            want = ref[step, list(entry)]
            assert torch.allclose(got, want, atol=LOGPROB_TOL, rtol=0), (name, step, (got - want).abs().max())


def test_repetition_penalty_equals_transformers_processor(rng):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    vocab, rows = 300, 4
    logits = torch.randn(rows, vocab, generator=rng) * 3
    prompts = [torch.randint(0, vocab, (n,), generator=rng).tolist() for n in (5, 9, 1, 30)]
    outputs = [torch.randint(0, vocab, (n,), generator=rng).tolist() for n in (0, 4, 7, 12)]
    for penalty in (0.7, 1.0, 1.3, 2.0):
        pen = Penalties(torch.zeros(rows), torch.zeros(rows), torch.full((rows,), penalty),
                        token_counts(outputs, vocab, torch.device("cpu")),
                        token_counts(prompts, vocab, torch.device("cpu")) > 0)
        got = apply_penalties(logits, pen)
        proc = RepetitionPenaltyLogitsProcessor(penalty)
        for r in range(rows):
            ids = torch.tensor([prompts[r] + outputs[r]])
            want = proc(ids, logits[r:r + 1].clone())[0]
            assert torch.allclose(got[r], want, atol=1e-6, rtol=0)


def test_presence_and_frequency_follow_the_openai_formula(rng):
    vocab, rows = 200, 3
    logits = torch.randn(rows, vocab, generator=rng)
    outputs = [torch.randint(0, 20, (n,), generator=rng).tolist() for n in (0, 10, 40)]   # many repeats
    presence, frequency = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 0.25, -0.5])
    pen = Penalties(presence, frequency, torch.ones(rows), token_counts(outputs, vocab, torch.device("cpu")),
                    torch.zeros(rows, vocab, dtype=torch.bool))
    got = apply_penalties(logits, pen)
    want = logits.clone()
    for r in range(rows):
        for token in set(outputs[r]):   # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence
            want[r, token] -= outputs[r].count(token) * frequency[r] + presence[r]
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_engine_repetition_penalty_equals_hf_generate(tiny, rng):
    hf = load_hf_model("tiny")
    prompts = _prompts(rng, [6, 11])
    llm = LLM(tiny, num_blocks=64, block_size=8)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.8),
                        use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False, repetition_penalty=1.8, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == ref
    plain = greedy_generate(tiny, prompts[0], 12)
    assert outs[0].outputs[0].token_ids != plain        # the penalty really changed the greedy path


def test_defaults_leave_greedy_unchanged_and_penalties_change_it(tiny, rng):
    prompts = _prompts(rng, [4, 9, 17])
    llm = LLM(tiny, num_blocks=64, block_size=8)
    explicit = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, presence_penalty=0.0,
                              frequency_penalty=0.0, repetition_penalty=1.0, logprobs=3)
    outs = llm.generate(prompts, explicit, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [greedy_generate(tiny, p, 10) for p in prompts]
    assert all(max(d, key=d.get) == t for o in outs for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs))
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, frequency_penalty=2.0, presence_penalty=-0.5)
    penalized = llm.generate(prompts, params, use_tqdm=False)
    for prompt, o in zip(prompts, penalized):      # a plain greedy loop with the formula applied by hand
        out: list[int] = []
        with torch.no_grad():
            for _ in range(10):
                logits = tiny(torch.tensor([prompt + out]))[0, -1].float()
                for token in set(out):
                    logits[token] -= 2.0 * out.count(token) - 0.5
                out.append(int(logits.argmax()))
        assert o.outputs[0].token_ids == out


def test_overlap_streams_the_same_logprobs(tiny, rng):
    prompts = _prompts(rng, [7, 13, 3])
    params = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, logprobs=4, presence_penalty=0.7)
    serial = LLM(tiny, num_blocks=64, block_size=8).generate(prompts, params, use_tqdm=False)
    llm = LLM(tiny, num_blocks=64, block_size=8, async_scheduling=True)
    overlapped = llm.generate(prompts, params, use_tqdm=False)
    for a, b in zip(serial, overlapped):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == b.outputs[0].logprobs
    assert serial[0].outputs[0].logprobs is not None
    no_logprobs = llm.generate(prompts[:1], SamplingParams(max_tokens=2), use_tqdm=False)
    assert no_logprobs[0].outputs[0].logprobs is None


@pytest.mark.parametrize("kw,match", [
    (dict(logprobs=21), "logprobs"), (dict(logprobs=-1), "logprobs"), (dict(logprobs=True), "logprobs"),
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-3), "frequency_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_sampling_fields_fail_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)
