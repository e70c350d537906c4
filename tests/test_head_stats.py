"""Statistics of the head analysis against reference computations (numpy/scipy) on fixed data."""

from __future__ import annotations

import dataclasses

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
    attention_targets,
    copy_auc,
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
    # the unfiltered rule (no significance, no minimum effect) does
    assert select_head_set(effect.reshape(L, H), attention, HeadSetRule(min_effect=0.0)).heads
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


def test_attention_sinks_and_tiny_effects_are_not_argument_passers():
    """Issue 23, finding 7: a head whose largest attention target is position 0 (a sink) in most prompts passes the
    median and floor with 0.25 on S, and a last-layer head moving M by -0.15% is significant on many prompts; neither
    may enter the set."""
    effect = np.array([[-20.0, -0.15, 0.0, 0.0], [-8.0, 0.0, 0.0, 0.0]])
    hi = np.array([[-10.0, -0.05, 1.0, 1.0], [-4.0, 1.0, 1.0, 1.0]])  # all three significantly below 0
    attention = np.array([[0.25, 0.3, 0.01, 0.01], [0.4, 0.01, 0.01, 0.01]])
    subject_top = np.array([[0.1, 0.9, 0.0, 0.0], [0.8, 0.0, 0.0, 0.0]])  # L0.H0: a sink (argmax 0 mostly)
    rule = HeadSetRule()
    assert select_head_set(effect, attention, rule, hi, subject_top).heads == [(1, 0)]
    # without the sink rule and the minimum effect the old rule took both
    loose = HeadSetRule(min_effect=0.0)
    assert select_head_set(effect, attention, loose, hi).heads[:1] == [(0, 0)]
    assert (0, 1) in select_head_set(effect, attention, dataclasses.replace(loose, coverage=1.0), hi).heads
    assert (0, 1) not in select_head_set(effect, attention, dataclasses.replace(rule, coverage=1.0), hi,
                                         subject_top).heads


def test_attention_targets_find_the_subject_and_the_sink():
    rows = [[0.7, 0.1, 0.15, 0.05],  # position 0 is the largest target: a sink
            [0.1, 0.2, 0.6, 0.1],  # the subject (positions 1-2) holds the largest weight
            [0.2, 0.3, 0.1, 0.4]]  # END itself (position 3)
    top, sink = attention_targets(rows, [(1, 2)] * 3)
    assert top.tolist() == [0, 1, 0] and sink.tolist() == [True, False, False]
    # a subject that starts the prompt (no BOS, subject-first template): position 0 is the sink, not the subject
    top, sink = attention_targets([rows[0], [0.1, 0.7, 0.1, 0.1], rows[0]], [(0, 1), (0, 1), (0, 0)])
    assert top[:2].tolist() == [0, 1] and np.isnan(top[2]) and sink.tolist() == [True, False, True]


def test_copy_auc_ranks_the_own_subject_among_the_others():
    # 2 prompts x 1 head x 4 subject tokens; prompt 0's own token (index 1) beats all 3 others, prompt 1's (index 3)
    # beats one of three and ties one
    lens = np.array([[[1.0, 9.0, 2.0, 3.0]], [[5.0, 1.0, 2.0, 2.0]]])
    auc = copy_auc(lens, np.array([1, 3]))
    assert auc[:, 0].tolist() == [1.0, pytest.approx((1 + 0.5) / 3)]
    noise = np.random.default_rng(0).normal(size=(4000, 1, 30))  # no preference: 0.5 on average (the null)
    assert copy_auc(noise, np.zeros(4000, dtype=int)).mean() == pytest.approx(0.5, abs=0.01)
    assert np.isnan(copy_auc(lens[:, :, :1], np.array([0, 0]))).all()  # one subject token: nothing to compare


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
