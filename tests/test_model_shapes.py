"""The one table of real model shapes: each row against a source, and the attention kinds it implies."""
import dataclasses

import pytest
from transformers import AutoConfig, AutoModelForCausalLM
import torch

from common.model.kv_math import kv_bytes_per_token, mla_bytes_per_token
from common.model.model_shapes import MODEL_SHAPES, ModelShape, get_shape, kv_table
from common.models import hf_model_dir, load_config

# Dense SwiGLU decoders without biases (Llama family, Mistral): params are exactly what their shapes count.
LLAMA_LIKE = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-405b", "mistral-7b"]


def llama_params(s: ModelShape, tied: bool) -> int:
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer = s.hidden * (q + 2 * kv) + q * s.hidden + 3 * s.hidden * s.intermediate + 2 * s.hidden
    return s.layers * per_layer + s.vocab * s.hidden * (1 if tied else 2) + s.hidden


def test_smollm2_row_is_the_checkpoint_this_repo_loads():
    row = get_shape("smollm2-135m")
    assert row == ModelShape.from_config("smollm2-135m", load_config("smollm2-135m"))
    with torch.device("meta"):          # transformers' own module for the checkpoint, no weights allocated
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_model_dir("smollm2-135m")))
    assert row.params == sum(p.numel() for p in hf.parameters())     # tied embedding counted once
    assert row.bytes_per_token(2) == kv_bytes_per_token(hf.config.num_hidden_layers, hf.config.num_key_value_heads,
                                                        hf.config.head_dim, 2)


@pytest.mark.parametrize("name", LLAMA_LIKE)
def test_params_of_dense_rows_agree_with_what_their_shapes_count(name):
    """The published counts are rounded to 3-4 digits (< 0.2% off); a typo in layers, hidden, intermediate or
    heads moves the count by more than 0.5% (no tied embeddings in these models)."""
    assert get_shape(name).params == pytest.approx(llama_params(get_shape(name), tied=False), rel=5e-3)


def test_qwen2_and_falcon_params_agree_with_their_architectures():
    qwen = get_shape("qwen2-7b")       # Llama-like plus q/k/v biases
    biases = qwen.layers * (qwen.heads + 2 * qwen.kv_heads) * qwen.head_dim
    assert qwen.params == pytest.approx(llama_params(qwen, tied=False) + biases, rel=5e-3)
    f = get_shape("falcon-7b")         # fused qkv (1 KV head), dense, GELU MLP of two matrices, LayerNorm with bias
    attention = f.hidden * (f.heads + 2) * f.head_dim + f.hidden * f.hidden
    per_layer = attention + 2 * f.hidden * f.intermediate + 2 * f.hidden
    assert f.params == pytest.approx(f.layers * per_layer + f.vocab * f.hidden + 2 * f.hidden, rel=5e-3)


def test_attention_kinds_follow_the_numbers():
    kinds = {name: s.attention for name, s in MODEL_SHAPES.items()}
    assert kinds["llama-2-7b"] == kinds["llama-2-13b"] == "mha"
    assert kinds["llama-2-70b"] == kinds["llama-3-8b"] == kinds["mistral-7b"] == "gqa"
    assert kinds["falcon-7b"] == "mqa"
    assert kinds["deepseek-v2"] == kinds["deepseek-v3"] == "mla"


def test_kv_bytes_per_token_of_known_models():
    assert get_shape("llama-2-7b").bytes_per_token(2) == 512 * 1024      # the book's 16 KB is one layer
    llama3 = get_shape("llama-3-8b")
    assert llama3.mha_bytes_per_token() == 4 * llama3.bytes_per_token() == 4 * 128 * 1024
    assert get_shape("deepseek-v3").bytes_per_token(2) == mla_bytes_per_token(61, 512, 64, 2) == 61 * 576 * 2
    assert get_shape("llama-3-8b").bytes_per_token(0.5) == 32 * 1024      # 4-bit values


def test_with_attention_changes_only_the_kv_heads():
    l70 = get_shape("llama-3-70b")
    mha, mqa = l70.with_attention("mha"), l70.with_attention("mqa")
    assert (mha.kv_heads, mqa.kv_heads, l70.with_attention("gqa")) == (64, 1, l70)
    assert dataclasses.replace(mha, kv_heads=l70.kv_heads) == l70
    ds = get_shape("deepseek-v3").with_attention("mha")
    assert ds.attention == "mha" and ds.bytes_per_token(2) == kv_bytes_per_token(61, 128, 128, 2)
    with pytest.raises(ValueError):
        get_shape("llama-2-7b").with_attention("gqa")        # MHA has no grouping of its own


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="llama-3-8b"):
        get_shape("Llama-3-8B")


@pytest.mark.parametrize("bad", [dict(layers=0), dict(kv_heads=2, heads=9), dict(params=0), dict(kv_lora_rank=512),
                                 dict(head_dim=6.5)])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(get_shape("llama-3-8b"), **bad)


def test_kv_table_has_one_row_per_model():
    rows = {r["model"]: r for r in kv_table(2, 4096)}
    assert list(rows) == list(MODEL_SHAPES)
    assert rows["falcon-7b"]["kind"] == "MQA" and rows["falcon-7b"]["vs_MHA"] == 71
    assert rows["llama-2-7b"]["GiB_per_seq"] == 2.0
