"""NF4 (QLoRA's 4-bit NormalFloat) and the Lloyd-Max quantizer for N(0, 1).

The book's formula q_i = Φ⁻¹((i + 0.5) / 16) gives 16 symmetric levels with *no exact zero*
(勘误). QLoRA builds NF4 asymmetrically: 8 positive quantiles and 7 negative ones of N(0, 1)
between offset = 0.9677 and 1/2, plus an exact 0, each side normalized to ±1. Weights are scaled
block-wise by their absmax (block 64) and every value is encoded as the nearest level.
"""
from __future__ import annotations

import torch

# bitsandbytes' table (QLoRA, Dettmers et al. 2023), for checking `nf4_levels()`
NF4_QLORA = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0)

_NORMAL = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))


def book_levels(bits: int = 4, normalize: bool = True) -> torch.Tensor:
    """The book's q_i = Φ⁻¹((i + 0.5)/2^b), i = 0..2^b−1 (optionally divided by the largest).

    定义于 第8章 §8.2.3
    """
    p = (torch.arange(2 ** bits, dtype=torch.float64) + 0.5) / 2 ** bits
    q = _NORMAL.icdf(p)
    return q / q.abs().max() if normalize else q


def nf4_levels(offset: float = 0.9677083) -> torch.Tensor:
    """QLoRA's construction: 8 positive + 7 negative normal quantiles and an exact zero, in [-1, 1].

    定义于 第8章 §8.2.3
    """
    pos = _NORMAL.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -_NORMAL.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos / pos.max(), torch.zeros(1, dtype=torch.float64), neg / neg.abs().max()])
    return levels.sort().values


def quantize_to_levels(x: torch.Tensor, levels: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Block-wise absmax scaling, nearest level, dequantized back (returns x̂ in x's dtype).

    定义于 第8章 §8.2.3
    """
    if x.numel() % block_size:
        raise ValueError(f"{x.numel()} values do not split into blocks of {block_size}")
    blocks = x.reshape(-1, block_size).double()
    absmax = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    lv = levels.double().to(x.device)
    idx = ((blocks / absmax)[..., None] - lv).abs().argmin(-1)
    return (lv[idx] * absmax).reshape(x.shape).to(x.dtype)


def lloyd_max_normal(levels: int = 16, iters: int = 200) -> torch.Tensor:
    """MSE-optimal levels for N(0, 1): alternate thresholds t_i = (q_i + q_{i+1})/2 and centroids
    q_i = (φ(t_{i−1}) − φ(t_i)) / (Φ(t_i) − Φ(t_{i−1})).

    定义于 第8章 §8.2.3
    """
    q = torch.linspace(-2.5, 2.5, levels, dtype=torch.float64)
    for _ in range(iters):
        t = torch.cat([torch.tensor([-torch.inf], dtype=torch.float64), (q[1:] + q[:-1]) / 2,
                       torch.tensor([torch.inf], dtype=torch.float64)])
        pdf = torch.exp(-t.clamp(-40, 40) ** 2 / 2) / (2 * torch.pi) ** 0.5
        pdf = torch.where(t.isinf(), torch.zeros_like(pdf), pdf)
        cdf = _NORMAL.cdf(t)
        q = (pdf[:-1] - pdf[1:]) / (cdf[1:] - cdf[:-1])
    return q


def expected_mse_normal(levels: torch.Tensor, samples: int = 400_000, seed: int = 0) -> float:
    """E[(X − Q(X))²] for X ~ N(0, 1) quantized to the nearest of `levels` (Monte Carlo, fixed seed).

    定义于 第8章 §8.2.3
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, generator=g, dtype=torch.float64)
    idx = torch.bucketize(x, (levels[1:] + levels[:-1]) / 2)
    return float((x - levels[idx]).pow(2).mean())
