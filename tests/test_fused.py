"""The serving layout (common.model.fused) is chosen at load time and computes the unfused model's function;
`LLM(model)` runs a given model (unfused, fused or quantized) as it is and never changes it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from common.engine import LLM, SamplingParams
from common.model.fused import PrepackedLinear, pack_state_dict
from common.model.packed_gemm import can_pack
from common.model.generate import greedy_generate
from common.models import load_hf_model, load_model
from common.quant.qlinear import QuantLinear, quantize_model


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_model_matches_unfused(dtype, tol, rng):
    model, fused = load_model("tiny", dtype), load_model("tiny", dtype, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=rng)
    with torch.inference_mode():
        ref, got = model(ids).float(), fused(ids).float()
    assert (ref - got).abs().max().item() <= tol * max(1.0, ref.abs().max().item())
    attn, mlp = fused.layers[0].self_attn, fused.layers[0].mlp
    assert not hasattr(attn, "q_proj") and not hasattr(mlp, "gate_proj")
    assert attn.qkv_proj.weight.shape[0] == sum(attn.qkv_sizes)
    # packed copies exactly where can_pack says (bf16 CPU), never in fp32 (the exactness path)
    assert all((m.packed_weight is not None) == can_pack(m.weight)
               for m in fused.modules() if isinstance(m, PrepackedLinear))


def test_packed_weights_are_the_checkpoint_rows():
    model, fused = load_model("tiny"), load_model("tiny", fused=True)
    attn, fattn = model.layers[1].self_attn, fused.layers[1].self_attn
    q, k, v = fattn.qkv_proj.weight.split(fattn.qkv_sizes)
    assert torch.equal(q, attn.q_proj.weight) and torch.equal(k, attn.k_proj.weight)
    assert torch.equal(v, attn.v_proj.weight)
    gate, up = fused.layers[1].mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(gate, model.layers[1].mlp.gate_proj.weight)
    assert torch.equal(up, model.layers[1].mlp.up_proj.weight)
    with pytest.raises(KeyError, match="lacks"):
        pack_state_dict({"layers.0.self_attn.q_proj.weight": q, "layers.0.self_attn.k_proj.weight": k})


def test_prepacked_copy_survives_deepcopy_and_follows_to(rng):
    fused = load_model("tiny", torch.bfloat16, fused=True)
    ids = torch.randint(0, fused.config.vocab_size, (1, 7), generator=rng)
    twin = copy.deepcopy(fused)
    assert twin.lm_head.weight is twin.embed_tokens.weight   # still tied
    with torch.inference_mode():
        assert torch.equal(twin(ids), fused(ids))
        twin.float()   # .to(fp32): the packed copy is dropped (fp32 runs F.linear)
        assert twin.lm_head.packed_weight is None
        reference = load_model("tiny", torch.bfloat16).float()   # the same bf16-rounded weights, unfused, fp32
        torch.testing.assert_close(twin(ids), reference(ids), rtol=0, atol=1e-5)


def _model_fingerprint(model: torch.nn.Module) -> tuple:
    """Module tree, state_dict keys and every tensor's bytes: what must not change when LLM runs a model."""
    state = model.state_dict()
    return (repr(model), list(state), [(k, t.clone()) for k, t in state.items()],
            [(n, p.data_ptr()) for n, p in model.named_parameters()])


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and all(
        ka == kb and torch.equal(ta, tb) for (ka, ta), (kb, tb) in zip(a[2], b[2]))


@pytest.mark.parametrize("fused", [False, True])
def test_llm_runs_the_given_model_unchanged(fused, rng):
    model = load_model("tiny", torch.float32, fused=fused)
    before = _model_fingerprint(model)
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=rng).tolist() for n in (6, 13)]
    expected = [greedy_generate(model, p, 8) for p in prompts]
    llm = LLM(model, dtype="float32", max_num_batched_tokens=32, kv_cache_memory=16 << 20)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert llm.model is model
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert _same(_model_fingerprint(model), before)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_model_runs_in_the_engine(bits, rng):
    """RTN QuantLinear (no .weight at all) through LLM: the engine's greedy tokens are the quantized model's own,
    and so are its logprobs. The model served once before it was quantized: nothing cached from that run
    (no fused copy) is used by the next engine."""
    model, original = load_model("tiny", torch.float32), load_model("tiny", torch.float32)
    LLM(model, dtype="float32", kv_cache_memory=16 << 20)   # served once, unquantized
    quantize_model(model, bits=bits, symmetric=True, granularity=32)
    assert not hasattr(model.layers[0].self_attn.q_proj, "weight")
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 7 * model.config.num_hidden_layers
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=rng).tolist() for n in (5, 17, 9)]
    expected = [greedy_generate(model, p, 10) for p in prompts]
    llm = LLM(model, dtype="float32", max_num_batched_tokens=32, kv_cache_memory=16 << 20)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=20)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected
    for prompt, out in zip(prompts, outs):   # first generated token: 20+ logprobs vs both models' log_softmax
        first = out.outputs[0].logprobs[0]
        ids, got = torch.tensor(list(first)), torch.tensor(list(first.values()))
        with torch.inference_mode():
            quant, orig = (torch.log_softmax(m(torch.tensor([prompt]))[0, -1].float(), -1)[ids]
                           for m in (model, original))
        assert (got - quant).abs().max().item() < 1e-4             # the quantized weights ran
        assert (got - orig).abs().max().item() > 1e-3             # RTN int8/int4 g32 moves them by ≥ 1e-2 here


def test_llm_by_name_loads_the_serving_layout_and_matches_transformers(rng):
    llm = LLM("tiny", dtype="float32", max_num_batched_tokens=32, kv_cache_memory=16 << 20)
    assert llm.model.fused and isinstance(llm.model.layers[0].self_attn.qkv_proj, PrepackedLinear)
    hf = load_hf_model("tiny")
    prompts = [torch.randint(3, llm.config.vocab_size, (n,), generator=rng).tolist() for n in (4, 11)]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.inference_mode():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == theirs


def test_prepacked_copy_follows_in_place_weight_edits(rng):
    """An in-place edit of a prepacked bf16 weight (what fake quantization or AWQ scaling do) is what runs next."""
    fused = load_model("tiny", torch.bfloat16, fused=True)
    ids = torch.randint(0, fused.config.vocab_size, (1, 9), generator=rng)
    mlp = fused.layers[0].mlp
    with torch.inference_mode():
        before = fused(ids)
    with torch.no_grad():
        mlp.down_proj.weight.mul_(0)   # the layer's MLP now adds nothing
    with torch.inference_mode():
        after = fused(ids)
        x = fused.layers[0].post_attention_layernorm(torch.randn(1, 3, fused.config.hidden_size,
                                                                 generator=rng).bfloat16())
        assert mlp(x).abs().max().item() == 0
    assert (after.float() - before.float()).abs().max().item() > 1e-2


def test_prepacked_copy_follows_a_swapped_data_tensor(rng):
    """`weight.data = other` (a common idiom) leaves the version counter alone: the next call still uses `other`,
    at one row and at three alike."""
    linear = PrepackedLinear(64, 48).bfloat16()
    new = torch.randn(48, 64, generator=rng).bfloat16()
    linear.weight.data = new
    with torch.inference_mode():
        for rows in (1, 3):
            x = torch.randn(rows, 64, generator=rng).bfloat16()
            torch.testing.assert_close(linear(x), F.linear(x, new), rtol=2 ** -7, atol=1e-2)

