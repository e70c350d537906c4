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

Design B is the primary test of step 2 (the paper's task-aware intercept): its R^2 and betas come with
bootstrap intervals over prompts and R^2 with a shuffled-prompt null (``pooled_bootstrap``), all from
per-prompt sufficient statistics, so a resample costs no new least squares over n d rows.

Labels (METHOD.md §5): the head's net contribution after the MLP is (1 + beta) o; reversed: beta < -1.5
(the sign flips and the size is at least half), erased: -1.5 <= beta <= -0.5 (|1 + beta| <= 0.5),
attenuated: -0.5 < beta < 0, amplified: beta > 0 (beta == 0: unchanged).
The task-aware component (METHOD.md §6) is c = m - sum_h beta_B[h] o[h]: the MLP output less the heads'
part with design B's task-shared betas (``task_component``); it keeps the shared intercept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ERASED_BELOW = -0.5
REVERSED_BELOW = -1.5


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
    """"reversed" | "erased" | "attenuated" | "unchanged" | "amplified" per beta ("" where beta is NaN)."""
    b = np.asarray(beta, dtype=np.float64)
    return np.select([np.isnan(b), b < REVERSED_BELOW, b <= ERASED_BELOW, b < 0, b == 0],
                     ["", "reversed", "erased", "attenuated", "unchanged"], "amplified")


@dataclass
class PooledBootstrap:
    """Design B on n prompts with intervals: the point fit, `beta_draws [B, H]` and `r2_draws [B]` over bootstrap
    resamples of the prompts (NaN where a resample's design is singular), and `null_r2 [P]`: R^2 with the MLP
    outputs paired with the head outputs of a random permutation of the prompts (the shuffled-prompt null)."""

    fit: PooledFit
    beta_draws: np.ndarray
    r2_draws: np.ndarray
    null_r2: np.ndarray


def _gram_full_rank(xtx: torch.Tensor, rel_tol: float = 1e-7) -> torch.Tensor:
    """`[B]` bool: each Gram matrix X'X `[B, H, H]` has full rank: X's smallest singular value (the square root of
    X'X's smallest eigenvalue) is above ``rel_tol`` times its largest. Eigenvalues of X'X carry an error of about
    eps times the largest, so singular values of X below about sqrt(eps) = 1.5e-8 of the largest cannot be told from
    0 through X'X: the test is that much stricter than ``fit_pooled``'s on X itself, never looser."""
    ev = torch.linalg.eigvalsh(xtx).clamp(min=0).sqrt()  # ascending singular values of X
    return (ev[..., -1] > 0) & (ev[..., 0] > rel_tol * ev[..., -1])


def pooled_bootstrap(heads, mlp, n_boot: int, seed: int, chunk: int = 100) -> PooledBootstrap:
    """Design B (``fit_pooled``) with bootstrap draws and the shuffled-prompt null (float64).

    With weights w_p (bootstrap counts, W = sum w): X'X = sum w_p O_p O_p' - S_o S_o' / W, X'y = sum w_p O_p m_p
    - S_o S_m / W, SS_tot = sum w_p |m_p|^2 - |S_m|^2 / W, with S_o = sum w_p O_p `[H, d]`, S_m = sum w_p m_p; then
    beta = (X'X)^-1 X'y and R^2 = X'y . beta / SS_tot. Under a permutation pi of the prompts X'X is unchanged and
    X'y = sum_p O_p m_pi(p) - n o_mean m_mean."""
    from .intervals import bootstrap_indices

    o = torch.as_tensor(heads, dtype=torch.float64)
    m = torch.as_tensor(mlp, dtype=torch.float64)
    n, H, d = o.shape
    fit = fit_pooled(o, m)
    # centred first (the weighted-centring formulas below are unchanged by a common shift): the rounding of X'X formed
    # by subtraction then scales with the outputs' variation, not with a large shared mean
    o, m = o - o.mean(0), m - m.mean(0)
    G = torch.einsum("nhd,nkd->nhk", o, o)  # [n, H, H]
    g = torch.einsum("nhd,nd->nh", o, m)  # [n, H]
    mm = (m * m).sum(1)  # [n]
    idx = torch.from_numpy(bootstrap_indices(n, n_boot, seed))
    w = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    beta_draws = torch.full((n_boot, H), float("nan"), dtype=torch.float64)
    r2_draws = torch.full((n_boot,), float("nan"), dtype=torch.float64)
    for a in range(0, n_boot, chunk):
        wb = w[a : a + chunk]
        s_o = torch.einsum("bn,nhd->bhd", wb, o)
        s_m = wb @ m
        W = float(n)
        xtx = torch.einsum("bn,nhk->bhk", wb, G) - torch.einsum("bhd,bkd->bhk", s_o, s_o) / W
        xty = wb @ g - torch.einsum("bhd,bd->bh", s_o, s_m) / W
        sst = wb @ mm - (s_m * s_m).sum(1) / W
        ok = _gram_full_rank(xtx)
        beta = torch.full_like(xty, float("nan"))
        if ok.any():
            beta[ok] = torch.linalg.solve(xtx[ok], xty[ok][:, :, None])[:, :, 0]
        beta_draws[a : a + chunk] = beta
        r2_draws[a : a + chunk] = torch.where(ok & (sst > 0), (xty * beta).sum(1) / sst, float("nan"))
    null = torch.full((n_boot,), float("nan"), dtype=torch.float64)
    o_mean, m_mean = o.mean(0), m.mean(0)
    xtx = torch.einsum("nhk->hk", G) - n * o_mean @ o_mean.T
    sst = float(mm.sum() - n * (m_mean * m_mean).sum())
    if not fit.singular and n > 1 and sst > 0 and bool(_gram_full_rank(xtx[None])[0]):
        cross = torch.einsum("phd,qd->pqh", o, m)  # [n, n, H]: O_p m_q
        base = n * (o_mean @ m_mean)
        rng = np.random.default_rng(seed + 1)
        perms = torch.from_numpy(np.stack([rng.permutation(n) for _ in range(n_boot)]))  # [P, n]
        xty = cross[torch.arange(n)[None, :], perms].sum(1) - base  # [P, H]
        beta = torch.linalg.solve(xtx, xty.T).T  # [P, H]
        null = (xty * beta).sum(1) / sst
    return PooledBootstrap(fit, beta_draws.numpy(), r2_draws.numpy(), null.numpy())


def task_component(heads: torch.Tensor | np.ndarray, mlp: torch.Tensor | np.ndarray, beta: np.ndarray) -> np.ndarray:
    """c = m - sum_h beta[h] o[h] `[n, d]` (float64; NaN rows where beta is NaN). ``beta`` is `[n, H]` (one row
    per prompt) or `[H]` (design B's task-shared betas, the same for every prompt)."""
    o = np.asarray(heads, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if b.ndim == 1:
        b = np.broadcast_to(b, o.shape[:2])
    return np.asarray(mlp, dtype=np.float64) - np.einsum("nh,nhd->nd", b, o)


def push_against_null(dla_objects: np.ndarray, answer_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Answer-specific push of a component per prompt and its shuffled-prompt null (METHOD.md §6).

    `dla_objects [n, K]`: the component's DLA onto each of the K object tokens of the relation (prompt p's own
    component); `answer_index [n]`: prompt p's answer among them. push_p(a) = DLA_p[a] - mean of DLA_p over the
    other K - 1 objects; the null is the mean over the other prompts q of push_p(answer of q): what the same
    component gives an answer it does not know (it is not 0 when the answers are unbalanced and the component
    favours the frequent ones). Returns (push [n], null [n]); NaN with fewer than 2 objects or prompts."""
    x = np.asarray(dla_objects, dtype=np.float64)
    n, K = x.shape
    if K < 2 or n < 2:
        nan = np.full(n, np.nan)
        return nan, nan.copy()
    total = x.sum(1, keepdims=True)
    push_all = x * K / (K - 1) - total / (K - 1)  # [n, K]: push_p toward each object
    push = push_all[np.arange(n), answer_index]
    counts = np.bincount(answer_index, minlength=K).astype(np.float64)  # answers of the n prompts
    null = ((push_all * counts[None, :]).sum(1) - push) / (n - 1)  # leave prompt p's own answer out once
    return push, null
