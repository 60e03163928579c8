"""Medusa heads (common.spec.medusa): zero-initialised heads repeat the base head, the drafter never changes
greedy output (the target verifies every draft), and self-distillation learns a future token that the hidden
state determines."""
from __future__ import annotations

import random

import pytest
import torch

from common.model.generate import greedy_generate
from common.spec import MedusaDrafter, MedusaHeads, distill_set, head_accuracy, speculative_generate, train_heads


def periodic(period: list[int], length: int, start: int) -> list[int]:
    return [period[(start + i) % len(period)] for i in range(length)]


def test_untrained_heads_repeat_the_base_head(tiny):
    heads = MedusaHeads(tiny.lm_head, num_heads=3)
    h = torch.randn(5, tiny.config.hidden_size)
    logits = heads(h)
    assert logits.shape == (3, 5, tiny.config.vocab_size)
    for i in range(3):
        torch.testing.assert_close(logits[i], tiny.lm_head(h), rtol=0, atol=0)
    assert not tiny.lm_head.weight.requires_grad or all(p.requires_grad for b in heads.blocks for p in b.parameters())


@pytest.mark.parametrize("k", [1, 3])
def test_medusa_drafter_keeps_greedy_output(tiny, k):
    seed = random.randrange(10**6)
    torch.manual_seed(seed)
    heads = MedusaHeads(tiny.lm_head, num_heads=3)
    for block in heads.blocks:                       # random, untrained heads: drafts are often wrong
        torch.nn.init.normal_(block.weight, std=0.5)
    prompt = [random.randrange(tiny.config.vocab_size) for _ in range(random.randint(3, 12))]
    want = greedy_generate(tiny, prompt, 24)
    got = speculative_generate(tiny, prompt, 24, MedusaDrafter(heads), k)
    assert got.tokens == want, f"seed {seed}"
    assert got.proposed > 0 and got.target_steps < 24 + 1


def test_drafter_refuses_to_run_without_the_target_hidden_state(tiny):
    with pytest.raises(RuntimeError):
        MedusaDrafter(MedusaHeads(tiny.lm_head, 2)).propose([1, 2, 3], 2)
    with pytest.raises(ValueError):
        MedusaHeads(tiny.lm_head, 0)


def test_self_distillation_learns_future_tokens(tiny):
    """On periodic text token t+2 is a function of the context: training must lift head accuracy well above
    the untrained heads on held-out sequences with the same period. The period's tokens are ones the frozen
    LM head can make the argmax at all (the argmax of random directions): with a small hidden size most of a
    big vocabulary is unreachable by any hidden vector."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    reachable = tiny.lm_head(torch.randn(512, tiny.config.hidden_size)).argmax(-1).unique().tolist()
    period = rng.sample(reachable, 7)
    train = [periodic(period, 40, rng.randrange(7)) for _ in range(24)]
    test = [periodic(period, 40, rng.randrange(7)) for _ in range(6)]
    tr, held_out = distill_set(tiny, train, 2), distill_set(tiny, test, 2)
    assert len(tr) == 24 * (40 - 3) and tr.future.shape == (len(tr), 2)
    assert tr.future[0].tolist() == train[0][2:4]
    heads = MedusaHeads(tiny.lm_head, 2)
    before = head_accuracy(heads, held_out, topk=(1,))[1]
    losses = train_heads(heads, tr, epochs=10, batch_size=128, lr=3e-2, seed=seed)
    after = head_accuracy(heads, held_out, topk=(1,))[1]
    assert losses[-1] < 0.5 * losses[0], f"seed {seed}: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert min(after) > 0.9 and max(before) < 0.5, f"seed {seed}: {before} -> {after}"


def test_checkpoint_has_vllm_medusa_layout(tiny, tmp_path):
    import json

    from safetensors.torch import load_file

    from common.spec import save_medusa_checkpoint
    heads = MedusaHeads(tiny.lm_head, 2)
    torch.nn.init.normal_(heads.blocks[1].weight)
    folder = save_medusa_checkpoint(heads, tmp_path / "medusa")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "medusa" and config["num_heads"] == 2 and config["original_lm_head"]
    tensors = load_file(folder / "model.safetensors")
    blocks = {f"blocks.{i}.layers.0.{p}" for i in range(2) for p in ("weight", "bias")}
    assert set(tensors) == {"lm_head.weight"} | blocks
    torch.testing.assert_close(tensors["blocks.1.layers.0.weight"], heads.blocks[1].weight.detach())


def test_distill_set_can_keep_only_generated_positions(tiny):
    seq = list(range(100, 130))
    full, generated = distill_set(tiny, [seq], 2), distill_set(tiny, [seq], 2, prompt_lens=[20])
    assert len(full) == 30 - 3 and len(generated) == 30 - 3 - 19
    assert generated.future[0].tolist() == seq[21:23]          # h of the last prompt token -> t+2, t+3
    torch.testing.assert_close(generated.hidden, full.hidden[19:])
    with pytest.raises(ValueError):
        distill_set(tiny, [seq], 2, prompt_lens=[20, 3])
