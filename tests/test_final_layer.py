"""Step 4 pieces on tiny random models of every family: the logit lens, the last layer's DLA, the
mitigation (END re-run against hooks in a whole forward pass), the split and the intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factrecall.tasks.capture import capture_batch
from factrecall.tasks.final_layer import (
    LastLayerInputs,
    calibration_split,
    final_layer_dla,
    final_layer_labels,
    mitigated_end_resid,
    mitigation_hooks,
    scale_along,
    token_directions,
)
from factrecall.tasks.intervals import bootstrap_indices, bootstrap_mean_ci
from factrecall.tasks.ledger import compute_ledger, direct_logit_attribution, norm_scale, stack_components
from factrecall.tasks.logit_lens import depth_residuals, logit_lens, runner_up, token_stats
from factrecall.tasks.readout import final_norm_of, unembedding
from factrecall.tasks.path_patching import EndRunner
from factrecall.tasks.final_layer_stage import _Grid, choose_alpha
from tiny_models import FAMILIES, loaded_tiny_model

ANSWER = torch.tensor([5, 17, 300])


def _setup(family: str):
    lm = loaded_tiny_model(family)
    gen = torch.Generator().manual_seed(11)
    rows = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (5, 9, 7)]
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    return lm, rows, cap


def _forward_end_logits(lm, rows):
    """The HF model's logits at each row's END (right padding), under whatever hooks are active."""
    from factrecall.tasks.capture import right_pad

    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits[torch.arange(len(rows)), end].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_at_the_last_layer_equals_the_model_logits(family):
    lm, _, cap = _setup(family)
    runner = EndRunner(lm)
    resid = depth_residuals(cap)
    assert resid.shape[1] == lm.dims.n_layers + 1
    torch.testing.assert_close(runner.logits(resid[:, -1]), cap.logits, atol=1e-5, rtol=1e-5)
    lens = logit_lens(runner, resid, ANSWER[:, None].expand(-1, resid.shape[1]))
    model = token_stats(cap.logits, ANSWER)
    torch.testing.assert_close(lens.logprob[:, -1], model.logprob, atol=1e-5, rtol=1e-5)
    assert torch.equal(lens.rank[:, -1], model.rank)
    # earlier layers really differ (the lens is not the output copied to every depth)
    assert (lens.logprob[:, 0] - lens.logprob[:, -1]).abs().max() > 1e-3


def test_token_stats_of_several_token_sets_equal_one_set_at_a_time():
    from factrecall.tasks.logit_lens import token_stats_many

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 50, generator=gen)
    sets = [torch.tensor([1, 7, 49, 0]), torch.tensor([3, 3, 2, 10])]
    for many, ids in zip(token_stats_many(logits, sets), sets):
        one = token_stats(logits, ids)
        for f in ("logit", "logprob", "rank", "entropy", "top1"):
            assert torch.equal(getattr(many, f), getattr(one, f)), f
    assert not torch.equal(token_stats_many(logits, sets)[0].logit, token_stats_many(logits, sets)[1].logit)

@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("max_rows", [1, 4, 7, 10_000])
def test_lens_reads_several_depths_per_call_as_one_depth_at_a_time(family, max_rows):
    """The lens reads out up to max_rows (prompt, depth) rows per call; each depth's statistics are those
    of reading that depth alone, for a token that differs per prompt and per depth."""
    from factrecall.tasks.logit_lens import logit_lens_many

    lm, _, cap = _setup(family)
    runner = EndRunner(lm)
    resid = depth_residuals(cap)
    B, depth = resid.shape[:2]
    tokens = torch.arange(B * depth).reshape(B, depth) * 37 % 1000
    other = ANSWER[:, None].expand(-1, depth)
    lens, lens_other = logit_lens_many(runner, resid, [tokens, other], max_rows=max_rows)
    for k in range(depth):
        one = token_stats(runner.logits(resid[:, k]), tokens[:, k])
        one_other = token_stats(runner.logits(resid[:, k]), ANSWER)
        for f in ("logit", "logprob", "rank", "entropy", "top1"):
            torch.testing.assert_close(getattr(lens, f)[:, k], getattr(one, f), atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(getattr(lens_other, f)[:, k], getattr(one_other, f), atol=1e-6, rtol=1e-6)
    assert lens.logit.shape == (B, depth)



def test_token_stats_against_a_direct_computation():
    logits = torch.tensor([[2.0, 1.0, 0.5, 3.0], [0.0, 0.0, 1.0, -1.0]])
    stats = token_stats(logits, torch.tensor([0, 2]))
    p = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(stats.prob.double(), p[[0, 1], [0, 2]], atol=1e-6, rtol=1e-6)
    assert stats.rank.tolist() == [1, 0]
    assert stats.correct.tolist() == [False, True]
    torch.testing.assert_close(stats.entropy.double(), -(p * p.log()).sum(-1), atol=1e-6, rtol=1e-6)
    assert runner_up(logits, torch.tensor([3, 2])).tolist() == [0, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_final_layer_dla_are_the_ledgers_terms(family):
    lm, _, cap = _setup(family)
    norm = final_norm_of(lm)
    w_u, b_u = unembedding(lm)
    ledger = compute_ledger(cap, stack_components(cap), ANSWER, w_u, b_u, norm.gain, norm.bias, norm.eps, norm.kind,
                            lm.dims.logit_softcap)
    names = [lab.name for lab in ledger.labels]
    labels = final_layer_labels(lm.dims.n_layers, lm.dims.n_heads)
    expected = ledger.dla[:, [names.index(lab.name) for lab in labels]]
    torch.testing.assert_close(final_layer_dla(cap, norm, w_u, ANSWER), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_scale_along_scales_the_dla_onto_that_token_by_alpha(kind):
    from factrecall.tasks.readout import FinalNorm

    gen = torch.Generator().manual_seed(2)
    d, V = 16, 40
    w_u = torch.randn(V, d, generator=gen)
    norm = FinalNorm(gain=torch.rand(d, generator=gen) + 0.5, bias=None, eps=1e-5, kind=kind)
    m = torch.randn(6, d, generator=gen)
    token = torch.tensor([1, 2, 3, 4, 5, 6])
    sigma = norm_scale(torch.randn(6, d, generator=gen), kind, norm.eps)
    dla = lambda v, t: direct_logit_attribution(v[:, None], w_u[t], norm.gain, sigma, kind)[:, 0]  # noqa: E731
    for alpha in (0.0, 0.3, 1.0):
        scaled = scale_along(m, token_directions(w_u, token, norm), alpha)
        torch.testing.assert_close(dla(scaled, token), alpha * dla(m, token), atol=1e-5, rtol=1e-5)
    # another token's DLA moves too (the intervention is not a no-op elsewhere), but alpha = 1 is exact
    torch.testing.assert_close(scale_along(m, token_directions(w_u, token, norm), 1.0), m)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_one_reproduces_the_original_logits(family):
    lm, rows, cap = _setup(family)
    runner = EndRunner(lm)
    inputs = LastLayerInputs.from_capture(cap)
    B, H = len(rows), lm.dims.n_heads
    dirs = token_directions(unembedding(lm)[0], ANSWER, final_norm_of(lm))[:, None]
    x = mitigated_end_resid(runner, inputs, torch.ones(B, 1, H), torch.ones(B, 1), dirs)
    torch.testing.assert_close(runner.logits(x[:, 0]), cap.logits, atol=1e-5, rtol=1e-5)
    T = max(len(r) for r in rows)
    with mitigation_hooks(lm, torch.ones(H), 1.0, dirs.expand(B, T, -1)):
        hooked = _forward_end_logits(lm, rows)
    torch.testing.assert_close(hooked, cap.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_end_rerun_equals_a_whole_forward_pass_with_hooks(family):
    lm, rows, cap = _setup(family)
    runner = EndRunner(lm)
    B, H, T = len(rows), lm.dims.n_heads, max(len(r) for r in rows)
    scale = torch.linspace(0.0, 0.8, H)
    dirs = token_directions(unembedding(lm)[0], ANSWER, final_norm_of(lm))
    inputs = LastLayerInputs.from_capture(cap)
    for head_scale, alpha in ((scale, 1.0), (torch.ones(H), 0.2), (scale, 0.0)):
        fast = runner.logits(mitigated_end_resid(runner, inputs, head_scale.expand(B, 1, H),
                                                 torch.full((B, 1), alpha), dirs[:, None])[:, 0])
        with mitigation_hooks(lm, head_scale, alpha, dirs[:, None].expand(B, T, -1)):
            reference = _forward_end_logits(lm, rows)
        torch.testing.assert_close(fast, reference, atol=2e-5, rtol=2e-5)
        assert (reference - cap.logits).abs().max() > 1e-4  # the intervention really changes the logits


def test_calibration_split_is_disjoint_seeded_and_covers_every_prompt():
    a = calibration_split(51, seed=3)
    assert a.dtype == bool and a.shape == (51,) and a.sum() == 26
    held = np.flatnonzero(~a)
    assert set(np.flatnonzero(a)).isdisjoint(held) and len(held) + a.sum() == 51
    assert np.array_equal(a, calibration_split(51, seed=3))
    assert not np.array_equal(a, calibration_split(51, seed=4))
    assert calibration_split(2, 0).sum() == 1
    with pytest.raises(ValueError, match="at least 2 prompts"):
        calibration_split(1, 0)


def test_bootstrap_mean_ci_against_a_direct_percentile_bootstrap():
    x = np.random.default_rng(5).normal(1.0, 2.0, size=(30, 2))
    mean, lo, hi = bootstrap_mean_ci(x, n_boot=400, seed=9)
    draws = np.stack([x[i].mean(0) for i in bootstrap_indices(30, 400, 9)])
    np.testing.assert_allclose(lo, np.percentile(draws, 2.5, axis=0))
    np.testing.assert_allclose(hi, np.percentile(draws, 97.5, axis=0))
    np.testing.assert_allclose(mean, x.mean(0))
    assert np.all(lo < mean) and np.all(mean < hi)
    single = bootstrap_mean_ci(np.array([2.0]))
    assert single[0] == 2.0 and np.isnan(single[1]) and np.isnan(single[2])


def test_choose_alpha_maximises_calibration_log_p_and_prefers_less_intervention_on_ties():
    rows = [("heads", 0.0), ("heads", 0.5), ("mlp_top1", 0.0), ("mlp_top1", 0.5)]
    logp = np.array([[-2.0, -1.5, -1.0, -2.0, -2.0],
                     [-2.0, -1.5, -1.0, -2.0, -2.0],
                     [-1.0, -5.0, -5.0, -1.0, -1.0]])
    grid = _Grid(rows, logp, np.exp(logp), logp > -1.2)
    cal = np.array([True, True, False])
    assert choose_alpha(grid, "heads", cal, (0.0, 0.5, 1.0)) == (0.5, pytest.approx(1.0))
    assert choose_alpha(grid, "mlp_top1", cal, (0.0, 0.5, 1.0)) == (1.0, 0.0)  # no gain: leave it alone


def test_a_component_whose_interval_crosses_zero_is_not_a_suppressor():
    from factrecall.tasks.intervals import significantly_negative

    rng = np.random.default_rng(3)
    dla = np.stack([rng.normal(-1.0, 0.5, 80),   # clearly suppressing
                    rng.normal(0.0, 1.0, 80) - 0.15,  # negative mean, interval across 0 (gemma's L17.mlp case)
                    rng.normal(0.5, 0.5, 80)], 1)
    mask, upper = significantly_negative(dla, n_boot=400, seed=0)
    assert dla[:, 1].mean() < 0  # a rule on the mean alone would call it a suppressor
    assert mask.tolist() == [True, False, False] and upper[0] < 0 < upper[1]


def test_a_mitigation_whose_only_gain_costs_too_much_text_is_not_chosen_under_the_bound():
    from factrecall.tasks.final_layer_stage import FinalLayerConfig, choose_mitigations

    rows = [("heads", 0.0), ("heads", 0.5), ("mlp_top1", 0.0), ("mlp_top1", 0.5),
            ("mlp_answer_oracle", 0.0), ("mlp_answer_oracle", 0.5)]
    # calibration log p per row (column 0 = no change): heads gains most at alpha 0, a little at 0.5;
    # mlp_top1 gains only at 0; the oracle gains nothing
    logp = np.array([[-2.0, -0.5, -1.8, -1.0, -2.0, -2.0, -2.0]] * 4)
    grid = _Grid(rows, logp, np.exp(logp), logp > -1.2)
    cal = np.array([True, True, False, False])

    class Text:  # plain-text cost per (variant, alpha): heads at 0 and mlp_top1 at 0 and 0.5 cost too much
        cost = {("heads", 0.0): -1.2, ("heads", 0.5): -0.01, ("mlp_top1", 0.0): -1.21, ("mlp_top1", 0.5): -0.3}

        def delta(self, variant, alpha, split):
            return np.full(10, 0.0 if alpha == 1.0 else self.cost[(variant, alpha)])

    config = FinalLayerConfig(alphas=(0.0, 0.5, 1.0), text_cost_bound=0.02)
    components = {"heads": ["L2.H0"], "mlp_answer_oracle": ["L2.mlp"], "mlp_top1": ["L2.mlp"]}
    chosen = choose_mitigations(grid, components, cal, config, Text())
    assert chosen[("heads", "unconstrained")][0] == 0.0  # the largest calibration gain, whatever it costs
    assert chosen[("heads", "cost_bounded")][0] == 0.5  # the best gain within the text-cost bound
    assert chosen[("mlp_top1", "unconstrained")][0] == 0.0
    assert chosen[("mlp_top1", "cost_bounded")] == (1.0, 0.0)  # every gain costs too much: no change
    assert chosen[("mlp_answer_oracle", "unconstrained")] == (1.0, 0.0)  # no gain: left alone
    assert ("mlp_answer_oracle", "cost_bounded") not in chosen  # the oracle has no text cost to bound


@pytest.mark.parametrize("family", FAMILIES)
def test_text_control_rerunning_the_last_layer_alone_equals_whole_forward_passes(family):
    """The plain-text cost re-runs only the last layer from recorded inputs: the same log p and top-1 as whole
    forward passes, for the heads and the MLP mitigation, and nothing left patched afterwards."""
    from factrecall.tasks.control_text import text_logprobs

    lm = loaded_tiny_model(family)
    gen = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, 1000, (n,), generator=gen) for n in (6, 11, 4)]
    recorded: list = []
    base, top1 = text_logprobs(lm, rows, record=recorded)
    assert len(recorded) == len(rows)
    assert torch.equal(base, text_logprobs(lm, rows)[0])  # recording changes nothing
    H = lm.dims.n_heads
    scale = torch.linspace(0.0, 0.9, H)
    for kwargs in (dict(head_scale=scale), dict(mlp_alpha=0.3, mlp_tokens=top1), dict(head_scale=torch.ones(H))):
        whole, whole_top1 = text_logprobs(lm, rows, **kwargs)
        fast, fast_top1 = text_logprobs(lm, rows, last_inputs=recorded, **kwargs)
        torch.testing.assert_close(fast, whole, atol=1e-6, rtol=1e-6)
        assert all(torch.equal(a, b) for a, b in zip(fast_top1, whole_top1))
        lean, none = text_logprobs(lm, rows, last_inputs=recorded, with_top1=False, **kwargs)
        assert torch.equal(lean, fast) and none == []  # without the top-1 tokens: the same log p
    assert (text_logprobs(lm, rows, head_scale=scale)[0] - base).abs().max() > 1e-4  # the mitigation matters
    assert not any("forward" in vars(layer) for layer in lm.adapter.layer_modules(lm.model))  # restored
