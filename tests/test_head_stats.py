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
    simultaneous_interval,
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


def test_a_constant_column_has_no_interval_and_no_warning():
    import warnings

    x = X.copy()
    x[:, 2] = 0.0  # a head that never attends (exactly 0, as bfloat16 rounds small weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice" RuntimeWarning would fail here
        lo, hi = bootstrap_pearson_ci(x, Y, n_boot=50, seed=1)
    assert np.isnan(lo[2]) and np.isnan(hi[2]) and np.isfinite(lo[[0, 1, 3]]).all()


def test_bootstrap_ratio_effect_point_and_interval():
    m_clean = RNG.uniform(5, 10, size=30)
    m_patched = m_clean[:, None] * np.array([0.5, 1.0, 1.2]) + RNG.normal(scale=0.1, size=(30, 3))
    point, lo, hi, se = bootstrap_ratio_effect(m_patched, m_clean, n_boot=200, seed=2)
    np.testing.assert_allclose(point, 100 * (m_patched.mean(0) - m_clean.mean()) / m_clean.mean())
    assert point[0] == pytest.approx(-50, abs=2) and point[2] == pytest.approx(20, abs=2)
    assert (lo <= point).all() and (point <= hi).all()
    assert (se > 0).all() and se[0] == pytest.approx((hi[0] - lo[0]) / (2 * 1.96), rel=0.3)


def test_simultaneous_intervals_widen_with_the_number_of_heads():
    from statistics import NormalDist

    point, se = np.zeros(270), np.ones(270)
    lo, hi = simultaneous_interval(point, se)
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * 270))
    np.testing.assert_allclose(hi, z)
    np.testing.assert_allclose(lo, -z)
    assert z > 3.7  # far wider than the 1.96 of one interval
    assert simultaneous_interval(np.zeros(1), np.ones(1))[1][0] == pytest.approx(1.96, abs=0.01)


def _patched(n_prompts: int, n_heads: int, planted: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """M per prompt: clean around 5, patched = clean + noise, minus a planted drop for some heads."""
    m_clean = rng.normal(5.0, 1.0, n_prompts)
    m_patched = m_clean[:, None] + rng.normal(0.0, 0.05, (n_prompts, n_heads))
    for head, drop in planted.items():
        m_patched[:, head] -= drop + rng.normal(0, 0.05, n_prompts)
    return m_patched, m_clean


def test_noise_only_head_effects_give_no_head_set():
    rng = np.random.default_rng(7)
    L, H = 30, 9
    m_patched, m_clean = _patched(60, L * H, {}, rng)
    effect, _, _, se = bootstrap_ratio_effect(m_patched, m_clean, n_boot=300, seed=0)
    _, hi = simultaneous_interval(effect, se)
    attention = rng.uniform(0, 1, (L, H))
    hs = select_head_set(effect.reshape(L, H), attention, HeadSetRule(), hi.reshape(L, H))
    assert (effect < 0).sum() > 50  # plenty of negative noise an unfiltered rule would have taken
    assert select_head_set(effect.reshape(L, H), attention, HeadSetRule()).heads  # the unfiltered rule does
    assert hs.heads == [] and not hs.significant.any()


def test_a_planted_strong_head_is_found_and_weak_attention_is_not_enough():
    rng = np.random.default_rng(8)
    L, H = 30, 9
    m_patched, m_clean = _patched(60, L * H, {4 * H + 2: 1.0, 20 * H + 5: 1.0}, rng)  # L4.H2, L20.H5 drop M by 1
    effect, _, _, se = bootstrap_ratio_effect(m_patched, m_clean, n_boot=300, seed=0)
    _, hi = simultaneous_interval(effect, se)
    attention = rng.uniform(0.0, 0.02, (L, H))  # every head attends little...
    attention[4, 2] = 0.6  # ...except L4.H2; L20.H5 is above its layer median only by a hair
    attention[20, 5] = 0.03
    hs = select_head_set(effect.reshape(L, H), attention, HeadSetRule(), hi.reshape(L, H))
    assert hs.significant[4, 2] and hs.significant[20, 5] and hs.significant.sum() == 2
    assert hs.heads == [(4, 2)]  # L20.H5 fails the absolute attention floor (0.05)


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
