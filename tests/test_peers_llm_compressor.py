"""llm-compressor's GPTQ (exercise 8.2, common/peers/llm_compressor.py) against our own GPTQ (common.quant).

One llmcompressor `oneshot` on the random 3-layer `tiny` model (seconds): its saved compressed-tensors checkpoint
must be asymmetric int4 with one scale and zero point per group, and the same algorithm on the same calibration
tokens must leave the model about as close to the unquantized one as our GPTQ does. Skipped on a reader's machine
without .venv/llmcompressor; a failure in CI (env CI set), where setup must create it.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from common.models import hf_model_dir, load_model
from common.peers import llm_compressor
from common.peers.llm_compressor import GPTQRecipe
from common.models import load_tokenizer
from common.quant.eval import EVAL_TOKENS, eval_token_ids
from common.quant.recipes import gptq_model, rtn_model

# tiny: hidden 64, intermediate 176, so a group of 16 columns divides every linear's input (llmcompressor needs that)
GROUP = 16
# Relative logit error ‖logits_q − logits_bf16‖ / ‖logits_bf16‖ on 512 evaluation tokens. Both sides run GPTQ with
# the same grid (asymmetric int4, groups of 16), natural column order, dampening 0.01 and calibration tokens; they
# differ in floating-point details (llmcompressor quantizes q/k/v as three modules in fp32, ours one concatenated
# matrix with an fp64 Hessian). Measured: llmcompressor 0.172, ours 0.178, RTN 0.237 (deterministic: no sampling).
# RATIO_MAX = 1.15 leaves 5x the measured 3% gap; a bug on either side (no error feedback = RTN, 1.3-1.4x here;
# a zero point off by one; the wrong group size) is caught by it or by the "better than RTN" check.
RATIO_MAX = 1.15


def _require_env() -> None:
    reason = llm_compressor.unavailable_reason()
    if reason:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(f"{reason} (CI is set: setup must create it)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def calib() -> list[list[int]]:
    return llm_compressor.calibration_windows("tiny", num_seqs=4, seq_len=128)


@pytest.fixture(scope="module")
def run(tmp_path_factory, calib) -> dict:
    _require_env()
    out = tmp_path_factory.mktemp("llmcompressor")
    result = llm_compressor.run_oneshot(hf_model_dir("tiny"), calib, out, GPTQRecipe(group_size=GROUP),
                                        seed=0, threads=1, timeout_s=300)
    assert "error" not in result, result.get("error")
    return {**result, "out_dir": out}


def test_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="group_size"):
        GPTQRecipe(group_size=0)
    with pytest.raises(ValueError, match="actorder"):
        GPTQRecipe(actorder="random")
    assert GPTQRecipe().name == "w4a16-g64-asym"


def test_missing_environment_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(llm_compressor, "LLMCOMPRESSOR_VENV", tmp_path / "nowhere")
    assert "setup_llmcompressor.sh" in llm_compressor.unavailable_reason()
    assert "setup_llmcompressor.sh" in llm_compressor.run_oneshot("x", [[1, 2]], tmp_path)["error"]


def test_checkpoint_is_asymmetric_int4_per_group(run):
    config = json.loads((run["out_dir"] / "compressed" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    (group,) = config["config_groups"].values()
    weights = group["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"], weights["actorder"]) == \
        (4, GROUP, False, None)
    assert config["ignore"] == ["lm_head"]
    # every dequantized group holds at most 2^4 distinct values: (q − z)·s with q in 0..15
    from safetensors.torch import load_file

    state = load_file(str(run["out_dir"] / "dequantized" / "model.safetensors"))
    w = state["model.layers.1.mlp.down_proj.weight"].float()
    levels = [torch.unique(g).numel() for g in w.reshape(w.shape[0], -1, GROUP).reshape(-1, GROUP)]
    assert max(levels) <= 16 and sum(levels) / len(levels) > 8, f"levels per group: max {max(levels)}"
    original = load_model("tiny", torch.bfloat16).layers[1].mlp.down_proj.weight.float()
    assert not torch.equal(w, original), "down_proj was not quantized"


def _relative_logit_error(model, reference_logits, ids) -> float:
    with torch.inference_mode():
        logits = model(ids).float()
    return float((logits - reference_logits).norm() / reference_logits.norm())


def test_same_error_as_our_gptq(run, calib):
    ids = torch.tensor([eval_token_ids(load_tokenizer("tiny"))[EVAL_TOKENS[0]:EVAL_TOKENS[0] + 512]])
    with torch.inference_mode():
        reference = load_model("tiny", torch.bfloat16)(ids).float()
    theirs = _relative_logit_error(llm_compressor.load_dequantized({"out_dir": run["out_dir"]}), reference, ids)
    ours = _relative_logit_error(gptq_model(load_model("tiny", torch.bfloat16), torch.tensor(calib), 4, GROUP),
                                 reference, ids)
    rtn = _relative_logit_error(rtn_model(load_model("tiny", torch.bfloat16), 4, GROUP, symmetric=False),
                                reference, ids)
    print(f"relative logit error: llmcompressor {theirs:.4f}, ours {ours:.4f}, RTN {rtn:.4f}")
    assert theirs < RATIO_MAX * ours and ours < RATIO_MAX * theirs, (theirs, ours)
    assert max(theirs, ours) < rtn, (theirs, ours, rtn)
