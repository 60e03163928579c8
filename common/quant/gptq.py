"""GPTQ (Frantar et al., 2022): quantize a weight column by column and push each column's
rounding error onto the columns not yet quantized, weighted by the *inverse* Hessian.

For one linear layer with calibration inputs X [n, d_in] the layer-wise objective
‖W Xᵀ − Ŵ Xᵀ‖² has Hessian H = (2/n) XᵀX (d_in × d_in). Quantizing column j to q_j, the
optimal (OBS) update of the remaining columns is

    δW[:, j+1:] = −(w_j − q_j) / [H⁻¹]_jj · [H⁻¹]_{j, j+1:}

(the book writes H instead of H⁻¹: 勘误). Taking U = the upper Cholesky factor of H⁻¹ once gives
the rows of every successively-reduced H⁻¹, so no inverse is recomputed; "lazy batch" updates
apply a block's accumulated error to the rest of the matrix with one matmul.
"""
from __future__ import annotations

import torch

from .rtn import QuantizedTensor, quantize


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = (2/n) XᵀX from inputs x [..., d_in] (fp64 accumulation for stability).

    定义于 第8章 §8.2.1
    """
    x = x.reshape(-1, x.shape[-1]).double()
    return (2.0 / x.shape[0]) * x.T @ x


def inverse_hessian_cholesky(H: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + λI)⁻¹ with λ = damp · mean(diag H); also the dead-column mask.

    定义于 第8章 §8.2.1
    """
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square, got {tuple(H.shape)}")
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def gptq_column_update(W: torch.Tensor, U: torch.Tensor, j: int, q_col: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ step: fix column j of W to q_col and compensate columns j.. with row j of U.

    W [rows, cols], U the upper Cholesky factor of H⁻¹ restricted to these columns. Returns the
    updated W (column j becomes exactly q_col) and the scaled error e = (w_j − q_j) / U_jj.

    定义于 第8章 §8.2.1
    """
    if W.dim() != 2 or U.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W {tuple(W.shape)} and U {tuple(U.shape)} do not match")
    if not 0 <= j < W.shape[1]:
        raise ValueError(f"column {j} out of range for {W.shape[1]} columns")
    err = (W[:, j] - q_col) / U[j, j]
    W = W.clone()
    W[:, j:] -= err[:, None] * U[j, j:][None, :].to(W.dtype)
    return W, err


def _group_grid(group: torch.Tensor, bits: int, symmetric: bool
                ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Scale and zero ([rows, 1]) of the RTN grid for a [rows, g] slice, and the code range."""
    qt = quantize(group, bits, symmetric, "channel")
    zero = torch.zeros_like(qt.scale) if qt.zero is None else qt.zero
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    return qt.scale, zero, float(lo), float(hi)


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 128,
                  symmetric: bool = False, block_size: int = 128, damp: float = 0.01) -> QuantizedTensor:
    """GPTQ-quantize W [out, in] given H [in, in]; groups of `group_size` columns (a short last group is fine).

    定义于 第8章 §8.2.1
    """
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W {tuple(W.shape)} and H {tuple(H.shape)} do not match")
    if group_size < 1 or block_size < 1:
        raise ValueError("group_size and block_size must be positive")
    rows, cols = W.shape
    U, dead = inverse_hessian_cholesky(H, damp)
    U = U.float()
    W = W.float().clone()
    W[:, dead] = 0.0
    codes = torch.zeros(rows, cols, dtype=torch.int8)
    n_groups = -(-cols // group_size)
    scales = torch.zeros(rows, n_groups)
    zeros = torch.zeros(rows, n_groups) if not symmetric else None
    scale = zero = None
    lo = hi = 0.0
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        block = W[:, b0:b1].clone()
        errors = torch.zeros_like(block)
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:  # new group: its grid comes from the already-updated weights
                g_end = min(col + group_size, cols)
                inside = block[:, i: min(g_end, b1) - b0]
                group = torch.cat([inside, W[:, b1:g_end]], dim=1) if g_end > b1 else inside
                scale, zero, lo, hi = _group_grid(group, bits, symmetric)
                scale, zero = scale[:, 0], zero[:, 0]
                scales[:, col // group_size] = scale
                if zeros is not None:
                    zeros[:, col // group_size] = zero
            w = block[:, i]
            c = torch.round(w / scale).add_(zero).clamp_(lo, hi)
            codes[:, col] = c.to(torch.int8)
            err = (w - (c - zero) * scale).div_(U[col, col])
            block[:, i:].addr_(err, U[col, col:b1], alpha=-1.0)  # rank-1 error feedback
            errors[:, i] = err
        W[:, b0:b1] = block
        W[:, b1:] -= errors @ U[b0:b1, b1:]  # lazy batch update of every later column
    return QuantizedTensor(codes, scales, zeros, bits, group_size)
