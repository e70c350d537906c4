"""Statistics of the head analysis against reference computations (numpy/scipy) on fixed data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from factrecall.tasks.head_stats import (
    HeadSetRule,
    bootstrap_pearson_ci,
    bootstrap_ratio_effect,
    jaccard,
    logit_lens_rank,
    pearson,
    select_head_set,
)
from factrecall.tasks.intervals import bootstrap_indices

RNG = np.random.default_rng(3)
X = RNG.normal(size=(40, 6))
Y = 0.5 * X + RNG.normal(size=(40, 6)) * np.linspace(0.1, 3, 6)


def test_pearson_matches_scipy_per_column():
    got = pearson(X, Y)
    expected = [scipy.stats.pearsonr(X[:, k], Y[:, k]).statistic for k in range(6)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))


def test_bootstrap_pearson_interval_matches_a_plain_loop():
    lo, hi = bootstrap_pearson_ci(X, Y, n_boot=300, seed=11)
    idx = bootstrap_indices(40, 300, 11)
    for k in range(6):
        draws = [np.corrcoef(X[i, k], Y[i, k])[0, 1] for i in idx]
        np.testing.assert_allclose([lo[k], hi[k]], np.quantile(draws, [0.025, 0.975]), rtol=1e-10)
    r = pearson(X, Y)
    assert (lo <= r).all() and (r <= hi).all() and (hi - lo > 0).all()


def test_bootstrap_ratio_effect_point_and_interval():
    m_clean = RNG.uniform(5, 10, size=30)
    m_patched = m_clean[:, None] * np.array([0.5, 1.0, 1.2]) + RNG.normal(scale=0.1, size=(30, 3))
    point, lo, hi = bootstrap_ratio_effect(m_patched, m_clean, n_boot=200, seed=2)
    np.testing.assert_allclose(point, 100 * (m_patched.mean(0) - m_clean.mean()) / m_clean.mean())
    assert point[0] == pytest.approx(-50, abs=2) and point[2] == pytest.approx(20, abs=2)
    assert (lo <= point).all() and (point <= hi).all()


def test_head_set_rule_on_hand_made_effects():
    effect = np.array([[-10.0, -1.0, 0.5, -30.0],
                       [-40.0, -5.0, -2.0, 1.0]])
    attention = np.array([[0.9, 0.1, 0.2, 0.8],   # median 0.5: heads 0 and 3 pass
                          [0.7, 0.6, 0.1, 0.0]])  # median 0.35: heads 0 and 1 pass
    hs = select_head_set(effect, attention, HeadSetRule(coverage=0.8))
    # candidates (negative and above median): L1H0 -40, L0H3 -30, L0H0 -10, L1H1 -5 -> total 85
    # cumulative: 40 (47%), 70 (82% >= 80%) -> stop
    assert hs.heads == [(1, 0), (0, 3)]
    assert hs.covered_share == pytest.approx(70 / 85)
    assert hs.covered_share_all == pytest.approx(70 / 88)
    assert select_head_set(effect, attention, HeadSetRule(coverage=1.0)).heads == [(1, 0), (0, 3), (0, 0), (1, 1)]
    # flipped signs: the only negative heads (L0H2, L1H3) attend below their layer median
    assert select_head_set(-effect, attention).heads == []


def test_jaccard():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    assert jaccard(set(), set()) == 1.0 and jaccard({1}, set()) == 0.0


@pytest.mark.parametrize("norm_kind", ["layernorm", "rmsnorm"])
def test_logit_lens_rank_matches_brute_force(norm_kind):
    gen = torch.Generator().manual_seed(0)
    vectors, w_u, gain = torch.randn(50, 8, generator=gen), torch.randn(30, 8, generator=gen), torch.rand(8, generator=gen) + 0.5
    tokens = torch.randint(0, 30, (50,), generator=gen)
    got = logit_lens_rank(vectors, tokens, w_u, gain, norm_kind, chunk=7)
    for i in range(50):
        v = vectors[i] - vectors[i].mean() if norm_kind == "layernorm" else vectors[i]
        logits = w_u @ (gain * v)
        assert got[i] == int((logits > logits[tokens[i]]).sum())
    assert len(set(got.tolist())) > 3
