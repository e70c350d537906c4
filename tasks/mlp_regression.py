"""Step 2 and 3 of the mechanism: the MLP as an activation over the heads, and the task-aware component
(METHOD.md §5-6). Pure float64 numpy/torch on END vectors.

Inputs are one layer's head outputs `o [n, H, d]` (the linearised contributions the ledger sums) and its
MLP output `m [n, d]` at END, for n prompts.

Design A (per prompt, over the d_model coordinates): m = sum_h beta[h] o[h] + b 1 + e, H + 1 unknowns and
d equations; R^2 = 1 - |e|^2 / |m - mean(m)|^2 (against the intercept-only fit).
Design B (across prompts): m_p = sum_h beta[h] o[p, h] + b + e_p with one beta per head and a vector
intercept b `[d]` shared by the prompts. Eliminating b (it is the per-coordinate mean residual) leaves
least squares on the prompt-centred data, H unknowns and n d equations; R^2 against the vector-intercept
-only fit: 1 - |e|^2 / sum_p |m_p - mean_p m|^2.
A design whose columns are linearly dependent (rank below the number of unknowns) cannot identify beta:
it is reported (`singular`, `rank`) and its beta is NaN, never an arbitrary minimum-norm solution.

Labels (METHOD.md §5): the head's net contribution after the MLP is (1 + beta) o; erased: beta <= -0.5,
attenuated: -0.5 < beta < 0, amplified: beta > 0 (beta == 0: unchanged).
The task-aware component is c = m - sum_h beta[h] o[h] (Design A; it keeps the intercept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ERASED_BELOW = -0.5


@dataclass
class PerPromptFit:
    """Design A: `beta [n, H]`, `intercept [n]`, `r2 [n]`, `rank [n]`, `singular [n]` (beta NaN there)."""

    beta: np.ndarray
    intercept: np.ndarray
    r2: np.ndarray
    rank: np.ndarray
    singular: np.ndarray


@dataclass
class PooledFit:
    """Design B: `beta [H]`, `intercept [d]`, `r2`, `rank`, `singular`."""

    beta: np.ndarray
    intercept: np.ndarray
    r2: float
    rank: int
    singular: bool


def _rank_tol(x: torch.Tensor) -> torch.Tensor:
    """numpy.linalg.matrix_rank's default tolerance per matrix of a batch `[..., rows, cols]`."""
    s = torch.linalg.svdvals(x)
    return (s > s[..., :1] * max(x.shape[-2:]) * torch.finfo(x.dtype).eps).sum(-1)


def fit_per_prompt(heads: torch.Tensor | np.ndarray, mlp: torch.Tensor | np.ndarray) -> PerPromptFit:
    """Design A for every prompt at once (float64, batched least squares)."""
    o = torch.as_tensor(heads, dtype=torch.float64)
    m = torch.as_tensor(mlp, dtype=torch.float64)
    n, H, d = o.shape
    X = torch.cat([o.transpose(1, 2), torch.ones(n, d, 1, dtype=torch.float64)], dim=2)  # [n, d, H+1]
    rank = _rank_tol(X)
    singular = rank < H + 1
    sol = torch.linalg.lstsq(X, m[:, :, None], driver="gelsd").solution[:, :, 0]  # [n, H+1]
    resid = m - (X @ sol[:, :, None])[:, :, 0]
    ss_tot = ((m - m.mean(1, keepdim=True)) ** 2).sum(1)
    r2 = torch.where(ss_tot > 0, 1 - (resid**2).sum(1) / ss_tot, float("nan"))
    sol[singular] = float("nan")
    r2[singular] = float("nan")
    return PerPromptFit(sol[:, :H].numpy(), sol[:, H].numpy(), r2.numpy(), rank.numpy(), singular.numpy())


def fit_pooled(heads: torch.Tensor | np.ndarray, mlp: torch.Tensor | np.ndarray) -> PooledFit:
    """Design B over the prompts of one (relation, shot) and layer (float64)."""
    o = torch.as_tensor(heads, dtype=torch.float64)
    m = torch.as_tensor(mlp, dtype=torch.float64)
    n, H, d = o.shape
    o_mean, m_mean = o.mean(0), m.mean(0)
    X = (o - o_mean).transpose(1, 2).reshape(n * d, H)  # rows (prompt, coordinate)
    y = (m - m_mean).reshape(n * d)
    rank = int(_rank_tol(X))
    if rank < H:
        nan = np.full(H, np.nan)
        return PooledFit(nan, np.full(d, np.nan), float("nan"), rank, True)
    beta = torch.linalg.lstsq(X, y[:, None], driver="gelsd").solution[:, 0]
    resid = y - X @ beta
    r2 = float(1 - (resid**2).sum() / (y**2).sum())
    intercept = m_mean - torch.einsum("h,hd->d", beta, o_mean)
    return PooledFit(beta.numpy(), intercept.numpy(), r2, rank, False)


def beta_label(beta: np.ndarray) -> np.ndarray:
    """"erased" | "attenuated" | "unchanged" | "amplified" per beta ("" where beta is NaN)."""
    b = np.asarray(beta, dtype=np.float64)
    return np.select([np.isnan(b), b <= ERASED_BELOW, b < 0, b == 0], ["", "erased", "attenuated", "unchanged"],
                     "amplified")


def task_component(heads: torch.Tensor | np.ndarray, mlp: torch.Tensor | np.ndarray, beta: np.ndarray) -> np.ndarray:
    """c = m - sum_h beta[h] o[h] `[n, d]` (float64; NaN rows where beta is NaN)."""
    o = np.asarray(heads, dtype=np.float64)
    return np.asarray(mlp, dtype=np.float64) - np.einsum("nh,nhd->nd", np.asarray(beta, dtype=np.float64), o)
