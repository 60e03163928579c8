"""EngineConfig is the one source of engine defaults: LLM overrides, the server's flags and the
benchmark all read it, with vLLM's flag names."""
import argparse
from dataclasses import fields

import pytest
import torch

from common.engine import LLM, EngineConfig


def _parse(argv):
    return EngineConfig.from_cli_args(EngineConfig.add_cli_args(argparse.ArgumentParser()).parse_args(argv))


def test_flags_have_vllm_names_and_round_trip():
    assert _parse([]) == EngineConfig()
    cfg = _parse(["--max-num-seqs", "7", "--max-num-batched-tokens", "99", "--block-size", "32",
                  "--kv-cache-dtype", "int8", "--scheduling-policy", "priority", "--no-enable-prefix-caching",
                  "--max-model-len", "64", "--kv-cache-memory", "12345", "--async-scheduling"])
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.block_size, cfg.kv_cache_dtype) == (7, 99, 32, "int8")
    assert (cfg.scheduling_policy, cfg.enable_prefix_caching, cfg.max_model_len) == ("priority", False, 64)
    assert (cfg.kv_cache_memory, cfg.async_scheduling) == (12345, True)
    assert _parse(["--gpu-memory-utilization", "0.5"]).gpu_memory_utilization == 0.5
    with pytest.raises(SystemExit):
        _parse(["--kv-cache-dtype", "fp4"])


def test_server_flags_come_from_the_config():
    from common.serve.__main__ import parse_args

    args = parse_args([])
    assert EngineConfig.from_cli_args(args) == EngineConfig()
    assert EngineConfig.from_cli_args(parse_args(["--no-enable-prefix-caching", "--max-num-seqs", "3"])) == \
        EngineConfig.build(enable_prefix_caching=False, max_num_seqs=3)
    with pytest.raises(SystemExit):
        parse_args(["--block-size", "0"])


def test_llm_builds_its_config_from_overrides(tiny):
    llm = LLM(tiny, num_blocks=20, block_size=8, max_num_seqs=3, scheduling_policy="sjf")
    cfg = llm.engine_config
    assert (cfg.num_blocks, cfg.block_size, cfg.max_num_seqs, cfg.scheduling_policy) == (20, 8, 3, "sjf")
    assert (llm.num_blocks, llm.scheduler.max_num_seqs, llm.scheduler.policy) == (20, 3, "sjf")
    untouched = {f.name for f in fields(EngineConfig)} - {"num_blocks", "block_size", "max_num_seqs",
                                                           "scheduling_policy"}
    assert all(getattr(cfg, n) == getattr(EngineConfig(), n) for n in untouched)
    base = EngineConfig(block_size=8, num_blocks=12)
    assert LLM(tiny, config=base, max_num_seqs=2).engine_config == EngineConfig.build(base, max_num_seqs=2)


def test_bad_settings_fail_clearly(tiny):
    with pytest.raises(TypeError, match="max_num_seq"):
        LLM(tiny, max_num_seq=4)                     # typo: not silently ignored
    for kw, match in [(dict(block_size=0), "block_size"), (dict(kv_cache_dtype="fp8"), "kv_cache_dtype"),
                      (dict(scheduling_policy="lottery"), "lottery"), (dict(num_blocks=0), "num_blocks"),
                      (dict(max_model_len=1), "max_model_len"), (dict(gpu_memory_utilization=1.5), "gpu_memory")]:
        with pytest.raises(ValueError, match=match):
            EngineConfig.build(**kw)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            LLM(tiny, gpu_memory_utilization=0.5, block_size=8)


def test_reset_stats_clears_steps_and_prefix_counters(tiny):
    llm = LLM(tiny, num_blocks=20, block_size=4)
    from common.engine import SamplingParams
    llm.generate([list(range(3, 15))] * 2, SamplingParams(max_tokens=2), use_tqdm=False)
    assert llm.stats and llm.block_manager.stats.queries
    llm.reset_stats()
    assert not llm.stats and llm.block_manager.stats.queries == 0
