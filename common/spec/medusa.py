"""Medusa-1 heads (Cai et al., 2024): extra decoding heads on the target's own final hidden state.

Head i (1-based) reads the hidden state h_t that the base LM head turns into token t+1 and guesses token
t+1+i. Each head is one residual block h + SiLU(W h + b) followed by the target's LM head, kept frozen and
shared, so a head costs one hidden×hidden matmul plus an LM-head call and needs no KV cache. W starts at
zero: an untrained head predicts what the base head predicts, and training only learns the offset.

Trained by self-distillation: the target generates text, we cache its hidden states, and head i learns to
predict the token i+1 positions ahead in that text (the target's own continuation, so the heads imitate the
target rather than a dataset). The drafter then proposes head i's guess as draft token i; the target
verifies all of them in one forward, exactly as for any other drafter (common.spec.decode).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..model.llama import Llama
from .drafters import Draft, _check_k


class MedusaHeads(nn.Module):
    """`num_heads` residual SiLU blocks in front of a shared, frozen LM head.

    定义于 第9章 §9.3
    """

    def __init__(self, lm_head: nn.Linear, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        hidden = lm_head.in_features
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.lm_head = lm_head
        self.lm_head.weight.requires_grad_(False)

    @property
    def num_heads(self) -> int:
        return len(self.blocks)

    def head_hidden(self, hidden: torch.Tensor, head: int) -> torch.Tensor:
        """The input head `head` (0-based) hands to the LM head."""
        return hidden + F.silu(self.blocks[head](hidden))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [num_heads, *hidden.shape[:-1], vocab]."""
        return torch.stack([self.lm_head(self.head_hidden(hidden, i)) for i in range(self.num_heads)])


@dataclass
class DistillSet:
    """Hidden states h_t [N, hidden] and the tokens that follow them: future[:, i] = token t+2+i, the
    target of head i (0-based). Positions without num_heads+1 tokens after them are left out.

    定义于 第9章 §9.3
    """
    hidden: torch.Tensor
    future: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]


@torch.inference_mode()
def distill_set(model: Llama, sequences: Sequence[Sequence[int]], num_heads: int,
                prompt_lens: Sequence[int] | None = None) -> DistillSet:
    """Run the target over each full sequence (prompt + its own generation) and pair every position's
    final hidden state with the num_heads tokens after the next one.

    prompt_lens: keep only the positions whose targets are all generated tokens (a chat template's tokens
    are trivially predictable and would flatter the heads' accuracy).

    定义于 第9章 §9.3
    """
    if prompt_lens is not None and len(prompt_lens) != len(sequences):
        raise ValueError(f"{len(prompt_lens)} prompt lengths for {len(sequences)} sequences")
    hidden, future = [], []
    for n, seq in enumerate(sequences):
        ids = torch.tensor([list(seq)], device=model.device)
        h = model.hidden_states(ids)[0].float().cpu()
        first = max(prompt_lens[n] - 1, 0) if prompt_lens is not None else 0   # h of the last prompt token on
        usable = len(seq) - 1 - num_heads
        if usable <= first:
            continue
        hidden.append(h[first:usable])
        index = torch.arange(first, usable)[:, None] + torch.arange(2, 2 + num_heads)[None, :]
        future.append(torch.tensor(list(seq))[index])
    if not hidden:
        raise ValueError(f"no sequence has positions with {num_heads} tokens to predict")
    return DistillSet(torch.cat(hidden), torch.cat(future))


def train_heads(heads: MedusaHeads, data: DistillSet, epochs: int = 2, batch_size: int = 512, lr: float = 3e-3,
                seed: int = 0) -> list[float]:
    """Cross-entropy of every head on its own future token, summed over heads (Medusa-1's loss with equal
    weights), AdamW. Returns the mean loss of each epoch.

    定义于 第9章 §9.3
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    params = [p for block in heads.blocks for p in block.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lm_dtype = heads.lm_head.weight.dtype
    history = []
    heads.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(data), generator=gen), 0.0
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            h, y = data.hidden[idx], data.future[idx]
            loss = sum(F.cross_entropy(heads.lm_head(heads.head_hidden(h, i).to(lm_dtype)).float(), y[:, i])
                       for i in range(heads.num_heads))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(data))
    heads.eval()
    return history


@torch.inference_mode()
def head_accuracy(heads: MedusaHeads, data: DistillSet, topk: Sequence[int] = (1, 5),
                  batch_size: int = 1024) -> dict[int, list[float]]:
    """{k: [top-k accuracy of head 0, head 1, ...]} on held-out positions.

    定义于 第9章 §9.3
    """
    hits = {k: torch.zeros(heads.num_heads) for k in topk}
    for start in range(0, len(data), batch_size):
        h = data.hidden[start:start + batch_size].to(heads.lm_head.weight.dtype)
        y = data.future[start:start + batch_size]
        logits = heads(h)                                   # [heads, batch, vocab]
        ranked = logits.topk(max(topk), dim=-1).indices     # [heads, batch, K]
        for k in topk:
            hits[k] += (ranked[..., :k] == y.T[..., None]).any(-1).sum(-1).float()
    return {k: (v / len(data)).tolist() for k, v in hits.items()}


class MedusaDrafter:
    """Proposes head i's guess as draft token i from the hidden state the target computed for the last
    committed token. It never runs the target itself: `speculative_generate` hands it that hidden state
    (drafters with `uses_target_hidden` get `observe_target_hidden(h)` after every target forward).

    定义于 第9章 §9.3
    """

    uses_target_hidden = True

    def __init__(self, heads: MedusaHeads) -> None:
        self.heads = heads
        self.name = f"medusa({heads.num_heads} heads)"
        self._hidden: torch.Tensor | None = None

    def observe_target_hidden(self, hidden: torch.Tensor) -> None:
        """hidden [hidden_size]: the target's final hidden state at the newest committed token's parent,
        i.e. the row whose base logits produced the newest token."""
        self._hidden = hidden

    @torch.inference_mode()
    def propose(self, tokens: Sequence[int], k: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Draft:
        _check_k(k)
        if self._hidden is None:
            raise RuntimeError("MedusaDrafter needs the target's hidden state: use it through speculative_generate")
        k = min(k, self.heads.num_heads)
        if k == 0:
            return Draft([])
        h = self._hidden.to(self.heads.lm_head.weight.dtype)
        logits = torch.stack([self.heads.lm_head(self.heads.head_hidden(h, i)) for i in range(k)]).float()
        if temperature == 0:
            return Draft(logits.argmax(-1).tolist())
        probs = (logits / temperature).softmax(-1)
        drafted = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return Draft(drafted.tolist(), probs)


def save_medusa_checkpoint(heads: MedusaHeads, folder: str | Path) -> Path:
    """Write the heads as a Medusa checkpoint that vLLM's `speculative_config={"method": "medusa", "model": folder}`
    loads (its MedusaModel: one residual block per head with bias, and `original_lm_head` so every head shares
    the one LM head we trained against).

    定义于 第9章 §9.3
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hidden, vocab = heads.lm_head.in_features, heads.lm_head.out_features
    config = {"model_type": "medusa", "architectures": ["MedusaModel"], "hidden_size": hidden, "vocab_size": vocab,
              "num_heads": heads.num_heads, "num_hidden_layers": 1, "medusa_fc_bias": True,
              "original_lm_head": True}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {"lm_head.weight": heads.lm_head.weight.detach().float().contiguous().clone()}
    for i, block in enumerate(heads.blocks):
        tensors[f"blocks.{i}.layers.0.weight"] = block.weight.detach().float().contiguous().clone()
        tensors[f"blocks.{i}.layers.0.bias"] = block.bias.detach().float().contiguous().clone()
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
