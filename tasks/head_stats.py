"""Statistics of the argument-passing heads (METHOD.md §3–4): pure numpy/torch functions.

Conventions: per-prompt arrays are `[prompt, layer, head]`; intervals are percentile bootstrap 95%
intervals over prompts (resampled with replacement, seeded), returned as `(lo, hi)`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .intervals import bootstrap_indices


def pearson(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pearson r along `axis` (NaN where either side is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis, keepdims=True)
    yc = y - y.mean(axis, keepdims=True)
    num = (xc * yc).sum(axis)
    den = np.sqrt((xc**2).sum(axis) * (yc**2).sum(axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_pearson_ci(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Interval of r for each column of `x, y [n, ...]` (prompts on axis 0). A column whose r is undefined in
    every resample (a head whose attention or DLA does not vary, e.g. exactly 0 in bfloat16) has no interval: NaN,
    without numpy's "All-NaN slice" warning."""
    idx = bootstrap_indices(x.shape[0], n_boot, seed)
    rs = np.stack([pearson(x[i], y[i]) for i in idx])  # [n_boot, ...]
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        return np.nanquantile(rs, alpha, axis=0), np.nanquantile(rs, 1 - alpha, axis=0)


def ratio_effect(m_patched: np.ndarray, m_clean: np.ndarray) -> np.ndarray:
    """effect% = 100 (mean M_patched - mean M_clean) / mean M_clean over prompts (axis 0)."""
    base = m_clean.mean()
    return 100 * (m_patched.mean(0) - base) / base


def bootstrap_ratio_effect(m_patched: np.ndarray, m_clean: np.ndarray, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """effect% = 100 (mean M_patched - mean M_clean) / mean M_clean with its percentile interval and the
    bootstrap standard error.

    `m_patched [n, ...]`, `m_clean [n]`; returns (effect, lo, hi, se), each shaped like `m_patched[0]`.
    """
    point = ratio_effect(m_patched, m_clean)
    draws = np.stack([ratio_effect(m_patched[i], m_clean[i]) for i in bootstrap_indices(len(m_clean), n_boot, seed)])
    alpha = (1 - level) / 2
    return point, np.quantile(draws, alpha, axis=0), np.quantile(draws, 1 - alpha, axis=0), draws.std(0, ddof=1)


def simultaneous_interval(point: np.ndarray, se: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni-simultaneous normal intervals over all `point.size` estimates: point ± z se with
    z = Φ⁻¹(1 - (1 - level) / (2 m)); together they cover every true value with probability ≥ level."""
    from statistics import NormalDist

    m = max(1, point.size)
    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * m))
    return point - z * se, point + z * se


@torch.inference_mode()
def logit_lens_rank(vectors: torch.Tensor, token_ids: torch.Tensor, w_u: torch.Tensor, gain: torch.Tensor,
                    norm_kind: str, chunk: int = 2048) -> torch.Tensor:
    """Rank `[N]` (0 = top) of `token_ids [N]` in the logit lens of `vectors [N, d]`.

    The lens is the unembedding of the final norm's direction g * center(v) (its scale, and the
    final-norm and unembedding biases, are left out: a single component has no scale of its own).
    """
    ranks = torch.empty(len(vectors), dtype=torch.long)
    w = w_u.float()
    for start in range(0, len(vectors), chunk):
        v = vectors[start : start + chunk].float()
        if norm_kind == "layernorm":
            v = v - v.mean(-1, keepdim=True)
        logits = (v * gain) @ w.T  # [n, vocab]
        target = logits.gather(1, token_ids[start : start + chunk, None])
        ranks[start : start + chunk] = (logits > target).sum(1).cpu()
    return ranks


@dataclass(frozen=True)
class HeadSetRule:
    """docs/METHOD.md §4: candidates are heads whose patching effect is significantly negative (the upper end
    of its simultaneous interval below 0) and at least ``min_effect`` percent of M in size, whose mean attention
    END -> S is above both its layer's median and an absolute floor, and whose largest attention target is the
    subject (some subject token, not BOS or another position) in at least ``subject_top_share`` of the prompts:
    an attention sink that puts 0.2 of its weight on S while its argmax is position 0 is not moving the
    subject. The set is the smallest group of candidates, most negative first, that covers ``coverage`` of the
    candidates' summed negative effect. No candidate: no argument-passing heads."""

    coverage: float = 0.8
    attention_floor: float = 0.05
    min_effect: float = 1.0
    subject_top_share: float = 0.5
    level: float = 0.95
    correction: str = ("Bonferroni over the partition's heads: effect ± z·se, z = Φ⁻¹(1 − (1 − level)/(2·m)), "
                       "se = bootstrap standard error over prompts")
    attention_filter: str = ("mean attention END->S above the median of its layer and at least attention_floor, and "
                             "a subject token is the head's largest attention target in at least subject_top_share "
                             "of the prompts")
    effect: str = "100 (mean M_patched - mean M_clean) / mean M_clean, sender = mean over subject-corrupted prompts"
    candidates: str = ("heads passing the attention filter whose simultaneous interval lies below 0 and whose effect "
                       "is at most -min_effect")
    prompts: str = "the prompts the model answers correctly (answer top-1 at END)"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class HeadSet:
    heads: list[tuple[int, int]]  # in order of decreasing |negative effect|
    above_median: np.ndarray  # [L, H] bool: passes the attention filter (median, floor and subject-top share)
    significant: np.ndarray  # [L, H] bool: simultaneous interval below 0
    covered_share: float  # share of the candidates' total negative effect covered
    covered_share_all: float  # share of every head's total negative effect covered


def passes_attention(attention: np.ndarray, rule: HeadSetRule, subject_top: np.ndarray | None = None) -> np.ndarray:
    """`[L, H]` bool: the rule's attention filter on mean `attention [L, H]` (END -> S) and the share
    `subject_top [L, H]` of prompts whose largest attention target is a subject token (None: not checked)."""
    above = (attention > np.median(attention, axis=1, keepdims=True)) & (attention >= rule.attention_floor)
    return above if subject_top is None else above & (np.nan_to_num(subject_top, nan=-1.0) >= rule.subject_top_share)


def select_head_set(effect: np.ndarray, attention: np.ndarray, rule: HeadSetRule = HeadSetRule(),
                    effect_hi: np.ndarray | None = None, subject_top: np.ndarray | None = None) -> HeadSet:
    """Apply the rule to per-head `effect [L, H]` (effect%), mean `attention [L, H]` (END -> S), the upper ends
    `effect_hi [L, H]` of the simultaneous intervals (None: every negative effect counts) and the share
    `subject_top [L, H]` of prompts whose largest attention target is a subject token (None: not checked)."""
    above = passes_attention(attention, rule, subject_top)
    significant = (effect_hi < 0) if effect_hi is not None else (effect < 0)
    candidates = [(l, h) for l, h in zip(*np.nonzero(above & significant & (effect <= -rule.min_effect)))]
    candidates.sort(key=lambda lh: (effect[lh], lh))  # most negative first, ties by position
    total = -sum(effect[lh] for lh in candidates)
    total_all = -effect[effect < 0].sum()
    chosen, covered = [], 0.0
    for lh in candidates:
        if total > 0 and covered >= rule.coverage * total - 1e-12:
            break
        chosen.append((int(lh[0]), int(lh[1])))
        covered += -effect[lh]
    return HeadSet(
        heads=chosen,
        above_median=above,
        significant=significant,
        covered_share=float(covered / total) if total > 0 else 0.0,
        covered_share_all=float(covered / total_all) if total_all > 0 else 0.0,
    )


def attention_targets(attn_rows: list, subject_span: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per attention row (END -> every position of one prompt, one head) whether a subject token is its largest
    target, and whether position 0 (BOS or the first token: the usual sink) is. `subject_span[i]` is the
    (first, last) subject position of row i's prompt. Position 0 counts as the sink, never as the subject: a
    subject that starts the prompt (a subject-first template at zero shots without BOS) is its tokens after
    position 0, and a subject that is position 0 alone cannot be told from the sink (NaN). Returns a float array
    `[rows]` (1, 0 or NaN) and a bool array `[rows]`."""
    top = np.zeros(len(attn_rows), dtype=np.float64)
    sink = np.zeros(len(attn_rows), dtype=bool)
    for i, (row, (a, b)) in enumerate(zip(attn_rows, subject_span)):
        k = int(np.argmax(np.asarray(row, dtype=np.float64)))
        top[i] = np.nan if b < 1 else float(max(a, 1) <= k <= b)
        sink[i] = k == 0
    return top, sink


def copy_auc(lens_subjects: np.ndarray, own_index: np.ndarray) -> np.ndarray:
    """How strongly each head output writes its own prompt's subject rather than another subject of the relation
    (the shuffled-subject control, METHOD.md §4): the share of the relation's other subject tokens whose logit-lens
    score is below the own subject's (ties count half). `lens_subjects [n, ..., S]` are the lens scores of the S
    distinct subject tokens, `own_index [n]` the own token's index in S. 0.5 = no preference (the null); 1 = the
    own subject above every other. NaN with fewer than 2 subject tokens."""
    n, S = lens_subjects.shape[0], lens_subjects.shape[-1]
    if S < 2:
        return np.full(lens_subjects.shape[:-1], np.nan)
    own = np.take_along_axis(lens_subjects, own_index.reshape((n,) + (1,) * (lens_subjects.ndim - 1)), -1)
    below = (lens_subjects < own).sum(-1) + 0.5 * ((lens_subjects == own).sum(-1) - 1)
    return np.where(np.isnan(own[..., 0]), np.nan, below / (S - 1))


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0
