"""The building blocks of a Llama layer: RMSNorm, rotary position embedding (RoPE), SwiGLU MLP.

Each is written the way Hugging Face computes it (same op order, fp32 where HF uses fp32),
so that our fp32 logits match transformers to ~1e-5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import PrepackedLinear


class RMSNorm(nn.Module):
    """x / rms(x) * weight. The statistics are taken in fp32 even for bf16 activations.

    定义于 第6章 §6.1
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each (i, i + d/2) pair of a head by angle position * theta^(-2i/d).

    定义于 第6章 §6.1
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta ** exponents), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [..., seq, head_dim] for integer `positions` of shape [..., seq]."""
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation helper: (x1, x2) -> (-x2, x1) over the two halves of the last dimension.

    定义于 第6章 §6.1
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/sin: [batch, seq, head_dim] (or broadcastable).

    定义于 第6章 §6.1
    """
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    return x * cos + rotate_half(x) * sin


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gated MLP of Llama.

    fused=True (the serving layout, common.model.fused) holds gate and up as one packed `gate_up_proj` (one
    matmul, split after) with prepacked linears (on CPU bf16 the whole layer runs in C++, see
    `DecoderLayer`); the default is the teaching layout.

    定义于 第6章 §6.1
    """

    def __init__(self, hidden: int, intermediate: int, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.gate_up_sizes = [intermediate, intermediate]
        if fused:
            self.gate_up_proj = PrepackedLinear(hidden, 2 * intermediate)
            self.down_proj = PrepackedLinear(intermediate, hidden)
        else:
            self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
            self.up_proj = nn.Linear(hidden, intermediate, bias=False)
            self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.gate_up_proj(x).split(self.gate_up_sizes, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)
