"""Percentile-bootstrap intervals over prompts (METHOD.md §3: every aggregate carries n and a 95% interval).

Conventions: prompts are on axis 0; resampling is with replacement and seeded, so an interval is a
pure function of (data, n_boot, seed); intervals are returned as `(lo, hi)` shaped like one row.
"""

from __future__ import annotations

import numpy as np


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`[n_boot, n]` resampling indices (with replacement)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of `values [n, ...]` over axis 0; NaN interval when n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.shape[0] == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    mean = x.mean(0)
    if x.shape[0] < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    draws = x[bootstrap_indices(x.shape[0], n_boot, seed)].mean(1)  # [n_boot, ...]
    alpha = (1 - level) / 2
    return mean, np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0)


def mean_ci_fields(prefix: str, values, n_boot: int = 1000, seed: int = 0) -> dict:
    """Store-row fields ``prefix``, ``prefix_lo``, ``prefix_hi``: the mean of the finite ``values [n]`` and its
    bootstrap 95% interval; None where undefined (no finite value; an interval from fewer than 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {prefix: None, f"{prefix}_lo": None, f"{prefix}_hi": None}
    mean, lo, hi = bootstrap_mean_ci(v, n_boot, seed)
    num = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
    return {prefix: float(mean), f"{prefix}_lo": num(lo), f"{prefix}_hi": num(hi)}


def significantly_negative(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Which columns of `values [n, k]` have a mean significantly below 0, and the upper ends of their
    simultaneous intervals: mean + z se over the k columns tested (Bonferroni, z = Φ⁻¹(1 − (1 − level)/(2k)),
    se = bootstrap standard error of the mean). Returns (mask [k], upper [k])."""
    from statistics import NormalDist

    x = np.asarray(values, dtype=np.float64)
    k = x.shape[1]
    se = x[bootstrap_indices(x.shape[0], n_boot, seed)].mean(1).std(0, ddof=1) if x.shape[0] > 1 else np.full(k, np.inf)
    upper = x.mean(0) + NormalDist().inv_cdf(1 - (1 - level) / (2 * max(1, k))) * se
    return upper < 0, upper


#: The fewest prompts a verdict, a head set or a per-partition statistic that a claim uses may rest on: fewer make
#: a percentile-bootstrap interval too optimistic to decide on (docs/METHOD.md §10).
MIN_N = 10


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (None, None for n = 0). Unlike a bootstrap of 0/1 values it is not
    [0, 0] at zero successes, so "the rate is below a threshold" can be shown from few prompts."""
    from statistics import NormalDist

    if n <= 0:
        return None, None
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
