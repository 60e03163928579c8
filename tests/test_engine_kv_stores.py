"""The engine's KV stores (common.engine.kv_stores): one table keyed by kv_cache_dtype, one interface.

Every store sizes itself to a byte budget by its own bytes per token, and the runner's attention over
each store equals torch SDPA over the K/V that store holds (the INT8 one: dequantize(quantize(K/V)))."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from common.engine import LLM, SamplingParams
from common.engine.kv_stores import KV_STORES, kv_store_class
from common.engine.runner import ModelRunner
from common.engine.sequence import Sequence
from common.model.llama import LlamaConfig
from common.models import load_config
from common.paged import BlockManager, HeadMajorKVStore
from common.paged.decode_attention import decode_kernel_available
from common.quant.kv_int8 import dequantize_kv, quantize_kv
from common.quant.kv_int8_paged import Int8HeadMajorKVStore

CFG = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=8, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)
MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def test_table_names_the_stores_and_rejects_unknown_keys():
    assert kv_store_class("auto") is HeadMajorKVStore and kv_store_class("int8") is Int8HeadMajorKVStore
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \('auto', 'int8'\), got 'fp8'"):
        kv_store_class("fp8")


@pytest.mark.parametrize("kv_cache_dtype", sorted(KV_STORES))
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
@pytest.mark.parametrize("config", [CFG, load_config("smollm2-135m")], ids=["small", "smollm2"])
def test_store_fills_its_budget_by_its_own_bytes_per_token(kv_cache_dtype, dtype, config):
    """num_blocks_for_memory blocks fit the budget and one more block would not (7 odd budgets)."""
    cls, block_size = KV_STORES[kv_cache_dtype], 16
    for budget in torch.linspace(1e6, 1.2e7, 7).long().add(12345).tolist():
        n = cls.num_blocks_for_memory(config, budget, block_size, dtype)
        fits, over = (cls(config, m, block_size, dtype) for m in (n, n + 1))
        assert fits.nbytes <= budget < over.nbytes, (budget, n, fits.nbytes, over.nbytes)
        assert fits.nbytes == n * block_size * cls.bytes_per_token(config, dtype)


def test_int8_store_holds_about_half_of_bf16():
    smol = load_config("smollm2-135m")
    int8, bf16 = (KV_STORES[k].bytes_per_token(smol, torch.bfloat16) for k in ("int8", "auto"))
    assert (int8, bf16) == (11880, 23040)            # 2·L·Hkv·(D + 2) against 2·L·Hkv·D·2: 66/128 for D = 64


def _reference(q, k, v, quantized):
    """SDPA of q [Hq, D] over k/v [t, Hkv, D] (after an INT8 round trip if `quantized`), fp32."""
    if quantized:
        k, v = (dequantize_kv(*quantize_kv(x), torch.float32) for x in (k, v))
    group = q.shape[0] // k.shape[1]
    k, v = (x.float().transpose(0, 1).repeat_interleave(group, 0) for x in (k, v))
    return F.scaled_dot_product_attention(q.float()[:, None], k, v)[:, 0]


@pytest.mark.parametrize("kv_cache_dtype", sorted(KV_STORES))
def test_runner_attention_equals_sdpa_over_the_store(kv_cache_dtype, rng):
    """Two steps through the runner's attention, fp32, GQA: step 1 = three prefills (two fresh, one
    chunk); step 2 = two decodes + the rest of the chunk over its cached prefix. Every query equals
    SDPA over the K/V the store holds to 1e-5 (the INT8 round trip is itself up to half a step per
    value, far above that: the check tells the two stores apart). With the C++ kernel the bf16/fp32 store
    attends every token, prefill included, through its one plan (unified attention); the INT8 store's prefill
    chunks go through SDPA: both runner paths are checked."""
    bs, hq, hkv, dim = 4, CFG.num_attention_heads, CFG.num_key_value_heads, CFG.head_dim
    store = kv_store_class(kv_cache_dtype)(CFG, 32, bs, torch.float32)
    manager = BlockManager(32, bs)
    runner = ModelRunner(SimpleNamespace(device=torch.device("cpu")), store, manager.block_table)
    lengths = (9, 14, 23)
    seqs = [Sequence(i, str(i), 0, torch.randint(0, 100, (n,), generator=rng).tolist(), SamplingParams())
            for i, n in enumerate(lengths)]
    for s in seqs:
        manager.allocate(s.seq_id, s.prompt_ids)
    k_all = [torch.randn(n, hkv, dim, generator=rng) * torch.exp(torch.randn(n, 1, 1, generator=rng))
             for n in lengths]
    v_all = [torch.randn(n, hkv, dim, generator=rng) for n in lengths]
    steps = [([(seqs[0], 8), (seqs[1], 13), (seqs[2], 10)], 0), ([(seqs[0], 1), (seqs[1], 1), (seqs[2], 13)], 2)]
    quantized = kv_cache_dtype == "int8"
    other_store_error = 0.0     # how far the other store's reference is: the check must tell them apart
    for scheduled, num_decode in steps:
        meta = runner.prepare(scheduled, num_decode)
        assert (meta.prefills == []) == store.unified_attention
        spans = [(s, range(s.num_computed, s.num_computed + n)) for s, n in scheduled]
        q = torch.randn(1, hq, meta.input_ids.shape[1], dim, generator=rng)
        k = torch.cat([k_all[s.seq_id][p.start:p.stop] for s, p in spans]).transpose(0, 1)[None]
        v = torch.cat([v_all[s.seq_id][p.start:p.stop] for s, p in spans]).transpose(0, 1)[None]
        runner.attention.meta = meta
        for layer in range(CFG.num_hidden_layers):
            out = runner.attention.attend(layer, q, k, v)
            row = 0
            for s, p in spans:
                for pos in p:
                    kv = k_all[s.seq_id][:pos + 1], v_all[s.seq_id][:pos + 1]
                    torch.testing.assert_close(out[0, :, row], _reference(q[0, :, row], *kv, quantized),
                                               atol=1e-5, rtol=1e-5)
                    other = _reference(q[0, :, row], *kv, not quantized)
                    other_store_error = max(other_store_error, (out[0, :, row] - other).abs().max().item())
                    row += 1
        for s, n in scheduled:
            s.num_computed += n
    assert other_store_error > 1e-3
    assert store.unified_attention == (kv_cache_dtype == "auto" and decode_kernel_available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_gather_rows_equals_dequantize_kv(dtype, rng):
    """The reused-buffer and fresh gathers of INT8 pages equal `dequantize_kv` bit for bit in the model dtype."""
    store = Int8HeadMajorKVStore(CFG, 10, 4, dtype)
    slots = torch.randperm(40, generator=rng)[:29]
    k, v = (torch.randn(29, 2, 16, generator=rng) * 3 for _ in range(2))
    store.write(1, slots, k, v)
    blocks = torch.tensor([[3, 1, 7], [0, 9, 2]])
    rows = store.block_rows(blocks)
    buffers = tuple(torch.empty(rows.numel(), 4, 16, dtype=dtype) for _ in range(2))
    expected = [x.flatten(1, 2).permute(2, 0, 1, 3) for x in store.gather(1, blocks, dtype)]   # [Hkv, 2, 12, D]
    for got in (store.gather_rows(1, rows), store.gather_rows(1, rows, buffers)):
        for g, e in zip(got, expected):
            assert g.dtype == dtype and torch.equal(g.view(2, 2, 12, 16), e)


def test_engine_store_comes_from_the_table(tiny):
    for key, cls in KV_STORES.items():
        llm = LLM(tiny, num_blocks=16, block_size=8, kv_cache_dtype=key)
        assert type(llm.kv_store) is cls and llm.kv_store.dtype == torch.float32
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 3
