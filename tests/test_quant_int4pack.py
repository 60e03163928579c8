"""Int4PackLinear (torch's CPU int4 kernel fed by our packing) against our reference dequantized matmul,
on fresh seeded shapes, and an INT4 model through our engine against plain greedy generate."""
import pytest
import torch

from common.engine import LLM, SamplingParams
from common.model.generate import greedy_generate
from common.models import load_model
from common.quant.gptq import gptq_quantize, hessian
from common.quant.int4pack import Int4PackLinear, decode_bytes_per_token, int4pack_model, kernel_group_size
from common.quant.qlinear import QuantLinear, quantize_model
from common.quant.rtn import dequantize, quantize

BF16_U = 2.0 ** -8   # bf16 unit roundoff (8 significant bits)


def random_case(rng: torch.Generator, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [N, K] with N, K drawn so that ragged groups, K not a multiple of 32 and N not a multiple of 16
    all occur; and inputs [M, K]."""
    n = int(torch.randint(1, 13, (1,), generator=rng)) * 16 + int(torch.randint(0, 2, (1,), generator=rng)) * 8
    k = int(torch.randint(2, 13, (1,), generator=rng)) * 32 + int(torch.randint(0, 2, (1,), generator=rng)) * 16
    m = int(torch.randint(1, 9, (1,), generator=rng))
    w = torch.randn(n, k, generator=rng) * 0.05
    w[:, int(torch.randint(0, k, (1,), generator=rng))] *= 20   # an outlier column, as real layers have
    return w, torch.randn(m, k, generator=rng)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fp32_kernel_equals_reference_dequantized_matmul(rng, group_size, symmetric):
    """In fp32 the scales are exact, so any difference is a packing/layout bug: relative 1e-5 of the output scale."""
    for _ in range(3):
        w, x = random_case(rng, group_size)
        qt = quantize(w, 4, symmetric, group_size)
        ref = x @ dequantize(qt).T
        got = Int4PackLinear(qt, dtype=torch.float32)(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_bf16_kernel_within_the_rounding_bound(rng, group_size):
    """bf16: scale and additive zero are rounded (≤ u relative each, u = 2⁻⁸), so per weight
    |ŵ_kernel − ŵ| ≤ u·s·(|q − 8| + |8 − z|) ≤ 16·u·s, plus one bf16 rounding of the output."""
    for _ in range(3):
        w, x = random_case(rng, group_size)
        qt = quantize(w, 4, False, group_size)
        xb = x.to(torch.bfloat16)
        ref = xb.float() @ dequantize(qt).T
        got = Int4PackLinear(qt, dtype=torch.bfloat16)(xb).float()
        s = qt.scale.repeat_interleave(group_size, dim=1)[:, : w.shape[1]]
        bound = 16 * BF16_U * (xb.float().abs() @ s.T) + BF16_U * ref.abs() + 1e-6
        excess = (got - ref).abs() - bound
        assert float(excess.max()) <= 0, f"worst excess over the bound {float(excess.max()):.3g}"
        # and the bound is tight enough to mean something: errors are far below a whole quantization step
        assert float((got - ref).abs().max()) < 0.25 * float((xb.float().abs() @ s.T).max())


def test_converts_rtn_and_gptq_results_exactly(rng):
    """The same Ŵ as our QuantLinear (RTN, GPTQ; AWQ's layers are RTN QuantLinears after its scale folding)."""
    w, x = random_case(rng, 64)
    calib = torch.randn(256, w.shape[1], generator=rng)
    for ql in (QuantLinear.from_linear(_linear(w), 4, False, 64),
               QuantLinear.from_linear(_linear(w), 4, True, 128),
               QuantLinear(gptq_quantize(w, hessian(calib), 4, 64, symmetric=False))):
        ref = x @ ql.dequantized_weight().T
        got = Int4PackLinear.from_quant_linear(ql, dtype=torch.float32)(x)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w.clone()
    return lin


def test_stacked_parts_split_back_to_the_separate_layers(rng):
    k = 192
    parts = [QuantLinear.from_linear(_linear(torch.randn(n, k, generator=rng)), 4, False, 64) for n in (96, 32, 32)]
    x = torch.randn(3, k, generator=rng)
    stacked = Int4PackLinear.from_quant_linear(*parts, dtype=torch.float32).split(x)
    for part, got in zip(parts, stacked):
        torch.testing.assert_close(got, Int4PackLinear.from_quant_linear(part, dtype=torch.float32)(x),
                                   rtol=1e-6, atol=1e-6)


def test_kernel_group_and_bad_input():
    assert kernel_group_size(128, 576) == 64      # SmolLM2: 576 = 4·128 + 64
    assert kernel_group_size(128, 1536) == 128
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel_group_size(16, 64)
    with pytest.raises(ValueError, match="4-bit"):
        Int4PackLinear(quantize(torch.randn(32, 64), 8, True, 32))
    with pytest.raises(ValueError, match="per group"):
        Int4PackLinear(quantize(torch.randn(32, 64), 4, True, "tensor"))


@torch.inference_mode()
def test_int4_model_in_engine_equals_greedy_generate():
    """tiny (fp32), RTN INT4 g32: the INT4 models of both layouts (unfused; serving layout with packed qkv/gate-up)
    give the QuantLinear model's logits, and the engine's greedy tokens equal plain greedy generate's on the
    packed INT4 model, which the engine runs as given."""
    ql_model = quantize_model(load_model("tiny", torch.float32), bits=4, symmetric=False, granularity=32)
    ids = torch.randint(3, ql_model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ref_logits = ql_model(ids)
    unfused = int4pack_model(quantize_model(load_model("tiny", torch.float32), bits=4, symmetric=False,
                                            granularity=32))
    fused = int4pack_model(quantize_model(load_model("tiny", torch.float32, fused=True), bits=4, symmetric=False,
                                          granularity=32))
    assert sum(isinstance(m, Int4PackLinear) for m in unfused.modules()) == 7 * 3
    assert sum(isinstance(m, Int4PackLinear) for m in fused.modules()) == 4 * 3
    assert decode_bytes_per_token(fused) < decode_bytes_per_token(unfused) + 1   # no padding rows per part
    for m in (unfused, fused):
        torch.testing.assert_close(m(ids), ref_logits, rtol=0, atol=1e-4 * float(ref_logits.abs().max()))
    prompts = [ids[0, :n].tolist() for n in (5, 17)] + [ids[1].tolist()]
    expected = [greedy_generate(fused, p, 12) for p in prompts]
    modules_before = repr(fused)
    llm = LLM(fused, dtype="float32", max_num_batched_tokens=32, kv_cache_memory=16 << 20)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    assert llm.model is fused and repr(fused) == modules_before
    assert [o.outputs[0].token_ids for o in outs] == expected


def test_bench_row_common_int4_runs_the_workload():
    from common.bench.engines import run_common_int4
    from common.bench.workload import make_workload

    work = make_workload(3, "8:16", "4:8", 49152, 0)
    row = run_common_int4(work, "tiny", "float32", {"kv_cache_memory": 16 << 20}, use_tqdm=False)
    assert "error" not in row and row["engine"] == "common-int4"
    assert [len(o) for o in row["outputs"]] == work.output_lens
    assert row["decode_weight_bytes"] < decode_bytes_per_token(load_model("tiny", torch.float32))
