"""The MLP-over-heads regressions (METHOD.md §5) on synthetic data with known coefficients."""

from __future__ import annotations

import numpy as np
import pytest

from factrecall.tasks.mlp_regression import (
    beta_label,
    fit_per_prompt,
    fit_pooled,
    pooled_bootstrap,
    push_against_null,
    task_component,
)

RNG = np.random.default_rng(0)
N, H, D = 40, 5, 64
O = RNG.normal(size=(N, H, D))
BETA = np.array([-1.0, -0.3, 0.0, 0.8, 2.0])


def test_design_a_recovers_beta_and_intercept_exactly_without_noise():
    per_prompt_beta = BETA + RNG.normal(0, 0.2, size=(N, H))
    b = RNG.normal(size=N)
    m = np.einsum("nh,nhd->nd", per_prompt_beta, O) + b[:, None]
    fit = fit_per_prompt(O, m)
    np.testing.assert_allclose(fit.beta, per_prompt_beta, atol=1e-9)
    np.testing.assert_allclose(fit.intercept, b, atol=1e-9)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-12)
    assert not fit.singular.any() and (fit.rank == H + 1).all()
    # c + sum beta o reproduces m
    np.testing.assert_allclose(task_component(O, m, fit.beta) + np.einsum("nh,nhd->nd", fit.beta, O), m, atol=1e-12)


def test_design_a_with_noise_matches_numpy_lstsq_and_r2_drops():
    m = np.einsum("h,nhd->nd", BETA, O) + 0.3 + RNG.normal(0, 1.0, size=(N, D))
    fit = fit_per_prompt(O, m)
    for i in (0, 7, 39):
        X = np.column_stack([O[i].T, np.ones(D)])
        ref, *_ = np.linalg.lstsq(X, m[i], rcond=None)
        np.testing.assert_allclose(fit.beta[i], ref[:H], atol=1e-9)
        resid = m[i] - X @ ref
        np.testing.assert_allclose(fit.r2[i], 1 - resid @ resid / ((m[i] - m[i].mean()) ** 2).sum(), atol=1e-12)
    assert (fit.r2 < 0.95).all() and (fit.r2 > 0.3).all()
    # with noise of sd 1 over 64 coordinates the per-prompt estimates scatter around the truth:
    # their mean over 40 prompts is within 0.1 of beta (standard error about 0.13 / sqrt(40) per head)
    np.testing.assert_allclose(fit.beta.mean(0), BETA, atol=0.1)


def test_design_b_recovers_shared_beta_and_vector_intercept():
    b = RNG.normal(size=D)
    m = np.einsum("h,nhd->nd", BETA, O) + b
    fit = fit_pooled(O, m)
    np.testing.assert_allclose(fit.beta, BETA, atol=1e-9)
    np.testing.assert_allclose(fit.intercept, b, atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and not fit.singular
    noisy = fit_pooled(O, m + RNG.normal(0, 1.0, size=(N, D)))
    np.testing.assert_allclose(noisy.beta, BETA, atol=0.05)  # n d = 2560 equations: standard error ~0.02
    assert 0.3 < noisy.r2 < 0.95


def test_singular_designs_are_reported_not_crashed_on():
    o = O.copy()
    o[3, 2] = o[3, 1]  # prompt 3: two identical head outputs
    m = np.einsum("h,nhd->nd", BETA, o)
    fit = fit_per_prompt(o, m)
    assert fit.singular.tolist() == [i == 3 for i in range(N)] and fit.rank[3] == H
    assert np.isnan(fit.beta[3]).all() and np.isnan(fit.r2[3]) and not np.isnan(fit.beta[2]).any()
    assert np.isnan(task_component(o, m, fit.beta)[3]).all()
    same = O.copy()
    same[:, 4] = 2 * same[:, 0]  # one head a multiple of another on every prompt
    pooled = fit_pooled(same, m)
    assert pooled.singular and pooled.rank == H - 1 and np.isnan(pooled.beta).all()
    boot = pooled_bootstrap(same, m, n_boot=20, seed=0)  # no resample and no null of a singular design
    assert np.isnan(boot.beta_draws).all() and np.isnan(boot.r2_draws).all() and np.isnan(boot.null_r2).all()
    # collinear across prompts only after centring (head 4 = 2 head 0 + a vector shared by every prompt, 100x their
    # variation): the resamples must still see it (X'X formed from uncentred outputs lost it to rounding in 104 of
    # 200 resamples)
    shifted = same + 100 * RNG.normal(size=(1, H, D))
    shifted[:, 4] = 2 * shifted[:, 0] + 100 * RNG.normal(size=(1, D))
    assert fit_pooled(shifted, m).singular
    assert np.isnan(pooled_bootstrap(shifted, m, n_boot=200, seed=0).beta_draws).all()


def test_labels_follow_the_thresholds():
    assert beta_label(np.array([-1.6, -1.5, -1.0, -0.5, -0.49, 0.0, 0.01, np.nan])).tolist() == [
        "reversed", "erased", "erased", "erased", "attenuated", "unchanged", "amplified", ""]


def test_design_b_bootstrap_equals_refitting_each_resample_and_the_null_each_permutation():
    """The sufficient-statistics bootstrap and the shuffled-prompt null against plain refits (fit_pooled) of the
    resampled and permuted data."""
    from factrecall.tasks.intervals import bootstrap_indices

    n, h, d = 12, 3, 16
    o = RNG.normal(size=(n, h, d))
    m = np.einsum("h,nhd->nd", BETA[:h], o) + RNG.normal(size=d) + RNG.normal(0, 2.0, size=(n, d))
    boot = pooled_bootstrap(o, m, n_boot=25, seed=4)
    for b, idx in enumerate(bootstrap_indices(n, 25, 4)):
        ref = fit_pooled(o[idx], m[idx])
        np.testing.assert_allclose(boot.beta_draws[b], ref.beta, atol=1e-9)
        np.testing.assert_allclose(boot.r2_draws[b], ref.r2, atol=1e-9)
    rng = np.random.default_rng(5)
    for k in range(25):
        perm = rng.permutation(n)
        np.testing.assert_allclose(boot.null_r2[k], fit_pooled(o, m[perm]).r2, atol=1e-9)
    assert np.quantile(boot.null_r2, 0.95) < boot.fit.r2 < boot.r2_draws.max()


def test_design_b_r2_of_unrelated_outputs_is_at_its_null():
    o = RNG.normal(size=(30, 4, 64))
    m = RNG.normal(size=(30, 64))  # MLP outputs unrelated to the heads'
    boot = pooled_bootstrap(o, m, n_boot=200, seed=0)
    assert boot.fit.r2 < 0.02 and boot.fit.r2 <= np.quantile(boot.null_r2, 0.99)


def test_push_against_null_matches_its_definition():
    rng = np.random.default_rng(2)
    n, k = 7, 4
    dla = rng.normal(size=(n, k))
    answer = np.array([0, 1, 1, 2, 3, 3, 3])  # unbalanced: object 3 is the answer of three prompts
    push, null = push_against_null(dla, answer)
    for p in range(n):
        push_to = lambda a: dla[p, a] - np.mean([dla[p, j] for j in range(k) if j != a])  # noqa: E731
        assert push[p] == pytest.approx(push_to(answer[p]))
        assert null[p] == pytest.approx(np.mean([push_to(answer[q]) for q in range(n) if q != p]))
    # a component favouring object 3 whatever the prompt: its push is not answer-specific, push - null ~ 0 on average
    frequent = np.tile([0.0, 0.0, 0.0, 2.0], (n, 1))
    p3, n3 = push_against_null(frequent, answer)
    assert (p3 - n3)[answer == 3].mean() > 0 > (p3 - n3)[answer != 3].mean()
    assert abs((p3 - n3).mean()) < abs(p3.mean())
