"""The claims' rules (tasks/claims.py), drift (tasks/reproduction.py) and spec checks, on hand-made rows."""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np
import pytest

from factrecall.tasks.claims import (
    CLAIMS,
    DOES_NOT,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTED,
    interval_verdict,
    simultaneous_mean_ci,
)
from factrecall.tasks.claims_stage import ClaimsConfig
from factrecall.tasks.models import PACKAGED
from factrecall.tasks.reproduction import SpecError, drift_rows, load_spec

JUDGE = {c.name: c.judge for c in CLAIMS}
CONFIG = ClaimsConfig(n_boot=400, seed=0)


def test_interval_verdicts():
    assert interval_verdict(0.1, 0.3, 0.0, "above") == HOLDS
    assert interval_verdict(-0.3, -0.1, 0.0, "above") == DOES_NOT
    assert interval_verdict(-0.1, 0.3, 0.0, "above") == INCONCLUSIVE
    assert interval_verdict(-0.3, -0.1, 0.0, "below") == HOLDS
    assert interval_verdict(0.1, 0.3, 0.0, "below") == DOES_NOT
    assert interval_verdict(0.45, 0.7, 0.5, "above") == INCONCLUSIVE  # the threshold, not 0
    assert interval_verdict(0.55, 0.7, 0.5, "above") == HOLDS
    assert interval_verdict(-0.3, -0.1, 0.0, "nonzero") == HOLDS
    assert interval_verdict(None, 0.3, 0.0, "above") == INCONCLUSIVE
    assert interval_verdict(float("nan"), 0.3, 0.0, "above") == INCONCLUSIVE


def test_simultaneous_intervals_use_the_bonferroni_quantile():
    rng = np.random.default_rng(1)
    cols = [rng.normal(m, 1.0, 200) for m in (0.0, 0.5, 1.0, -0.2)]
    out = simultaneous_mean_ci(cols, 2000, 0)
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * 4))  # 2.50 for four columns
    for col, (mean, lo, hi) in zip(cols, out):
        se = col.std(ddof=1) / np.sqrt(len(col))  # the bootstrap se estimates this
        assert mean == pytest.approx(col.mean())
        assert (hi - lo) / 2 == pytest.approx(z * se, rel=0.1)
    single = simultaneous_mean_ci(cols[:1], 2000, 0)[0]
    assert (single[2] - single[1]) / 2 == pytest.approx(1.96 * cols[0].std(ddof=1) / np.sqrt(200), rel=0.1)


def _heads(n_heads=1, effect=(-12.0, -20.0, -4.0), copy=(0.9, 0.85, 0.95), n_correct=40, attending=True):
    """One partition's heads rows: a set head L3.H1 (when n_heads) and a strong non-attending head L2.H0."""
    return {"head_sets": [{"skipped_reason": None, "n_heads": n_heads, "heads": ["L3.H1"] * n_heads,
                           "n_significant": 2, "n_prompts": 50, "n_correct": n_correct,
                           "no_heads_reason": None if n_heads else "no argument-passing heads: none attends"}],
            "head_summary": [
                {"layer": 3, "head": 1, "n": n_correct, "effect_pct": effect[0], "effect_simul_lo": effect[1],
                 "effect_simul_hi": effect[2], "effect_all_pct": -9.0, "effect_all_lo": -15.0, "effect_all_hi": -3.0,
                 "set_order": 1 if n_heads else None, "attention_passes": attending, "pearson_r": -0.08,
                 "r_lo": -0.3, "r_hi": 0.2, "mean_attn_to_s": 0.96, "subject_top_share": 0.98, "copy_auc": copy[0],
                 "copy_auc_lo": copy[1], "copy_auc_hi": copy[2], "copy_n": n_correct, "copy_auc_all": 0.8},
                {"layer": 2, "head": 0, "n": n_correct, "effect_pct": -30.0, "effect_simul_lo": -50.0,
                 "effect_simul_hi": -1.0, "effect_all_pct": -30.0, "effect_all_lo": -50.0, "effect_all_hi": -1.0,
                 "set_order": None, "attention_passes": False, "pearson_r": 0.1, "r_lo": -0.2, "r_hi": 0.3,
                 "mean_attn_to_s": 0.01, "subject_top_share": 0.0, "copy_auc": 0.5, "copy_auc_lo": 0.4,
                 "copy_auc_hi": 0.6, "copy_n": n_correct, "copy_auc_all": 0.5}]}


def test_argument_heads_verdicts():
    row = JUDGE["argument_heads"](_heads(), CONFIG)
    assert row["verdict"] == HOLDS and row["threshold"] == -1.0
    assert (row["value"], row["lo"], row["hi"]) == (-12.0, -20.0, -4.0)  # the set's first head, not the strongest
    assert (row["value_all"], row["n"], row["n_all"]) == (-9.0, 40, 50)  # all prompts beside the judged ones
    # a set whose first head moves M by less than the minimum effect (a -0.15% last-layer head) does not hold
    tiny = JUDGE["argument_heads"](_heads(effect=(-0.15, -0.3, -0.02)), CONFIG)
    assert tiny["verdict"] == INCONCLUSIVE
    # no set, and every head that attends to the subject is bounded away from the minimum effect: does not
    weak = _heads(0, effect=(-0.2, -0.5, 0.1))
    row = JUDGE["argument_heads"](weak, CONFIG)
    assert row["verdict"] == DOES_NOT and "every simultaneous interval lies above -1" in row["note"]
    # a strong head that does not attend (L2.H0) is no argument passer, and no evidence of absence either
    unsure = _heads(0, effect=(-0.8, -3.0, 0.1))
    assert JUDGE["argument_heads"](unsure, CONFIG)["verdict"] == INCONCLUSIVE
    skipped = {"head_sets": [{"skipped_reason": "fewer than 2 subjects"}], "head_summary": []}
    assert JUDGE["argument_heads"](skipped, CONFIG)["verdict"] == NOT_TESTED


def test_claims_are_not_tested_where_the_model_does_not_know_the_facts():
    """Issue 23, finding 8: accuracy 0 (gemma on demonyms) gave 6 of 8 claims "holds"."""
    for claim in ("argument_heads", "heads_copy_subject"):
        row = JUDGE[claim](_heads(n_correct=0), CONFIG)
        assert row["verdict"] == NOT_TESTED and "answers 0 of 50 prompts correctly" in row["note"], claim
    row = JUDGE["argument_heads"](_heads(n_correct=9), CONFIG)
    assert row["verdict"] == NOT_TESTED and "at least 10" in row["note"]
    up = _mlp(r2=(0.9, 0.8, 0.95, 0.01)) | {"function_application": [_fa(n_correct=3)]}
    for claim in ("mlp_linear", "mlp_scales_heads", "task_push", "argument_swap"):
        assert JUDGE[claim](up, CONFIG)["verdict"] == NOT_TESTED, claim
    lens = _lens(np.full(30, 0.3), np.full(30, 0.1), correct=np.zeros(30, dtype=bool))
    row = JUDGE["final_layer_suppresses"](lens, CONFIG)
    assert row["verdict"] == NOT_TESTED and row["value_all"] == pytest.approx(-0.2)
    assert "top-1 entering or leaving the last layer in 0 of 30 prompts" in row["note"]


def test_heads_copy_subject_is_judged_on_what_the_head_writes():
    """Issue 23, finding 6: a head attending at 0.96 with its subject at the top of its lens copies, although the
    attention-DLA correlation (r = -0.08) says nothing under saturated attention."""
    row = JUDGE["heads_copy_subject"](_heads(), CONFIG)
    assert row["verdict"] == HOLDS and row["null_value"] == 0.5 and row["threshold"] == 0.75
    assert "Pearson r" in row["note"] and "-0.08" in row["note"]
    null_level = JUDGE["heads_copy_subject"](_heads(copy=(0.52, 0.45, 0.6)), CONFIG)
    assert null_level["verdict"] == DOES_NOT  # no preference for the own subject
    assert JUDGE["heads_copy_subject"](_heads(copy=(0.75, 0.6, 0.9)), CONFIG)["verdict"] == INCONCLUSIVE
    assert JUDGE["heads_copy_subject"](_heads(0), CONFIG)["verdict"] == NOT_TESTED


def _fa(**kw):
    base = {"skipped_reason": None, "n_prompts": 50, "n_correct": 40, "best_layer": 7, "push": 1.2, "push_lo": 0.8,
            "push_hi": 1.6, "push_n": 20, "push_raw": 1.3, "push_null": 0.1, "push_mlp": 1.4, "push_mlp_lo": 1.0,
            "push_mlp_hi": 1.8, "push_intercept": 0.0, "push_all": 0.9, "push_all_lo": 0.5, "push_all_hi": 1.3,
            "push_all_n": 25, "pooled_r2": 0.7, "pooled_r2_lo": 0.6, "pooled_r2_hi": 0.8, "pooled_r2_null": 0.01,
            "pooled_r2_null_q95": 0.02, "pooled_r2_n": 40, "pooled_r2_all": 0.65}
    return base | kw


def _mlp(r2=(), betas=(), swaps=(), **fa):
    """betas: (beta, se) per head-set head of layer 5; swaps: (eligible, success, chance) per prompt."""
    return {
        "head_sets": [{"skipped_reason": None}],
        "function_application": [_fa(**fa)],
        "regression_layers": [{"layer": 5, "holds_head_set_head": True, "median_subject_rank_before": 120.0,
                               "median_subject_rank_after": 3.0},
                              {"layer": 6, "holds_head_set_head": False, "median_subject_rank_before": 9.0,
                               "median_subject_rank_after": 9.0}],
        "regression_heads": [{"layer": 5, "head": h, "pooled_beta": b, "pooled_beta_se": se, "pooled_beta_all": b,
                              "pooled_label": "x", "in_head_set": True} for h, (b, se) in enumerate(betas)],
        "argument_swap": [{"eligible": e, "success": s, "chance_success": c, "excluded_answer_in_subject": False}
                          for e, s, c in swaps],
    }


def test_mlp_linear_is_design_b_against_its_threshold_and_null():
    row = JUDGE["mlp_linear"](_mlp(), CONFIG)
    assert row["verdict"] == HOLDS and row["value"] == 0.7 and row["null_value"] == 0.01 and row["value_all"] == 0.65
    low = JUDGE["mlp_linear"](_mlp(pooled_r2=0.2, pooled_r2_lo=0.1, pooled_r2_hi=0.3), CONFIG)
    assert low["verdict"] == DOES_NOT
    straddle = JUDGE["mlp_linear"](_mlp(pooled_r2=0.5, pooled_r2_lo=0.4, pooled_r2_hi=0.6), CONFIG)
    assert straddle["verdict"] == INCONCLUSIVE
    # an R² at the level of the shuffled-prompt null never holds, whatever the threshold
    null_level = _mlp(pooled_r2=0.02, pooled_r2_lo=0.01, pooled_r2_hi=0.03, pooled_r2_null=0.02, pooled_r2_null_q95=0.04)
    assert JUDGE["mlp_linear"](null_level, ClaimsConfig(n_boot=400, r2_threshold=0.0))["verdict"] == DOES_NOT
    strict = JUDGE["mlp_linear"](_mlp(), ClaimsConfig(n_boot=400, r2_threshold=0.95))
    assert strict["verdict"] == DOES_NOT and strict["threshold"] == 0.95


def test_mlp_scales_heads_needs_a_beta_beyond_the_bound():
    """Issue 23, finding 3: β = 0.029 with an interval excluding 0 "held"; now |β| must be beyond 0.5."""
    row = JUDGE["mlp_scales_heads"](_mlp(betas=[(0.029, 0.005), (-1.94, 0.1)]), CONFIG)
    assert row["verdict"] == HOLDS and row["value"] == -1.94 and row["threshold"] == 0.5
    assert "120 -> 3" in row["note"]  # the subject's standing before and after the MLP at the head layers
    tiny = JUDGE["mlp_scales_heads"](_mlp(betas=[(0.029, 0.005), (0.1, 0.05)]), CONFIG)
    assert tiny["verdict"] == DOES_NOT  # significant but small: the heads pass nearly unscaled
    unsure = JUDGE["mlp_scales_heads"](_mlp(betas=[(0.6, 0.2)]), CONFIG)
    assert unsure["verdict"] == INCONCLUSIVE
    # simultaneous over the set: beyond the bound alone (z 1.96) but not among four heads (z 2.50)
    edge = (0.5 + 2.2 * 0.1, 0.1)
    assert JUDGE["mlp_scales_heads"](_mlp(betas=[edge]), CONFIG)["verdict"] == HOLDS
    assert JUDGE["mlp_scales_heads"](_mlp(betas=[edge] + [(0.0, 0.01)] * 3), CONFIG)["verdict"] == INCONCLUSIVE
    assert JUDGE["mlp_scales_heads"](_mlp(betas=[(None, None)]), CONFIG)["verdict"] == NOT_TESTED


def test_labels_name_sign_reversal():
    from factrecall.tasks.mlp_regression import beta_label

    assert beta_label(np.array([-1.94, -1.0, -0.2, 0.0, 0.3, np.nan])).tolist() == [
        "reversed", "erased", "attenuated", "unchanged", "amplified", ""]


def test_task_push_is_cross_fitted_and_against_its_null():
    row = JUDGE["task_push"](_mlp(), CONFIG)
    assert row["verdict"] == HOLDS and row["threshold"] == 0.5 and row["value_all"] == 0.9
    assert "each chosen by one half of the prompts" in row["note"] and "MLP output's own push" in row["note"]
    assert JUDGE["task_push"](_mlp(push=0.1, push_lo=-0.1, push_hi=0.3), CONFIG)["verdict"] == DOES_NOT
    assert JUDGE["task_push"](_mlp(push=0.03, push_lo=0.01, push_hi=0.05), CONFIG)["verdict"] == DOES_NOT  # null-level
    assert JUDGE["task_push"](_mlp(push=0.6, push_lo=0.3, push_hi=0.9), CONFIG)["verdict"] == INCONCLUSIVE
    skipped = {"function_application": [{"skipped_reason": "no argument-passing heads"}]}
    assert all(JUDGE[c](skipped, CONFIG)["verdict"] == NOT_TESTED
               for c in ("mlp_linear", "mlp_scales_heads", "task_push", "argument_swap"))


def test_argument_swap_can_hold_fail_and_stay_open():
    """Issue 23, finding 2: 0 successes in 19 eligible prompts was "inconclusive [0, 0]"; now it does not hold."""
    perfect = JUDGE["argument_swap"](_mlp(swaps=[(True, True, False)] * 20 + [(False, False, False)] * 5), CONFIG)
    assert perfect["verdict"] == HOLDS and perfect["value"] == 1.0 and perfect["n"] == 20
    assert perfect["lo"] == pytest.approx(0.839, abs=1e-3)  # Wilson, not the bootstrap's degenerate [1, 1]
    never = JUDGE["argument_swap"](_mlp(swaps=[(True, False, False)] * 19), CONFIG)
    assert never["verdict"] == DOES_NOT and never["value"] == 0.0 and never["hi"] == pytest.approx(0.168, abs=1e-3)
    half = JUDGE["argument_swap"](_mlp(swaps=[(True, True, False)] * 10 + [(True, False, False)] * 10), CONFIG)
    assert half["verdict"] == INCONCLUSIVE
    # as often as random head sets: not the heads' argument
    chance = JUDGE["argument_swap"](_mlp(swaps=[(True, True, True)] * 40 + [(True, False, False)] * 4), CONFIG)
    assert chance["verdict"] == INCONCLUSIVE and chance["null_value"] == pytest.approx(40 / 44)
    assert JUDGE["argument_swap"](_mlp(swaps=[(False, False, False)]), CONFIG)["verdict"] == NOT_TESTED


def _lens(p_before, p_after, correct, correct_before=None):
    """lens rows of the last two layers (3 and 4) for prompts with the given p and whether the answer is top-1
    leaving (``correct``) and entering (``correct_before``, default the same) the last layer."""
    rows = []
    before = correct if correct_before is None else correct_before
    for i, (a, b, c, e) in enumerate(zip(p_before, p_after, correct, before)):
        rows.append({"prompt_id": i, "layer": 3, "p_answer": a, "rank_answer": 0 if e else 3})
        rows.append({"prompt_id": i, "layer": 4, "p_answer": b, "rank_answer": 0 if c else 2})
    summary = {"delta_p": float(np.mean(np.array(p_after) - np.array(p_before))), "delta_p_lo": -0.3,
               "delta_p_hi": -0.1, "n": len(rows) // 2, "suppressors": ["L4.H3"]}
    return {"lens": rows, "final_layer_summary": [summary]}


def test_final_layer_suppression_is_judged_on_correct_prompts():
    rng = np.random.default_rng(0)
    before = rng.uniform(0.5, 0.9, 40)
    correct = np.r_[np.ones(30, dtype=bool), np.zeros(10, dtype=bool)]
    drop = np.where(correct, -0.1, +0.3) + rng.normal(0, 0.02, 40)  # raises the answer where it is wrong
    up = _lens(before, before + drop, correct)
    row = JUDGE["final_layer_suppresses"](up, CONFIG)
    assert row["verdict"] == HOLDS and row["n"] == 30 and row["n_all"] == 40
    assert row["value"] == pytest.approx(np.mean(drop[correct])) and row["threshold"] == -0.02
    small = JUDGE["final_layer_suppresses"](_lens(before, before - 0.005 + rng.normal(0, 0.001, 40), correct), CONFIG)
    assert small["verdict"] == DOES_NOT  # a null-level drop of half a point is not suppression
    noisy = JUDGE["final_layer_suppresses"](_lens(before, before - 0.02 + rng.normal(0, 0.05, 40), correct), CONFIG)
    assert noisy["verdict"] == INCONCLUSIVE
    # prompts the last layer pushes off top-1 are the suppression itself: judged too (top-1 entering the layer),
    # whereas the output's correct prompts alone would see only the 20 it leaves on top, which it raises
    knocked = np.r_[np.ones(20, dtype=bool), np.zeros(20, dtype=bool)]
    change = np.where(knocked, 0.02, -0.4) + rng.normal(0, 0.01, 40)
    row = JUDGE["final_layer_suppresses"](_lens(before, before + change, knocked, np.ones(40, dtype=bool)), CONFIG)
    assert row["verdict"] == HOLDS and row["n"] == 40


def _mitigation_rows(delta, alpha=0.5, components=("L4.H3",)):
    m = {"variant": "heads", "choice": "cost_bounded", "alpha": alpha, "components": list(components),
         "delta_p": 0.03, "delta_p_lo": 0.01, "delta_p_hi": 0.05, "n_held_out": 20, "note": None}
    prompts = [{"prompt_id": i, "variant": "heads", "choice": "cost_bounded", "split": "held_out",
                "correct_before": True, "p_before": 0.5, "p_after": 0.5 + d} for i, d in enumerate(delta)]
    prompts.append({"prompt_id": 29, "variant": "heads", "choice": "cost_bounded", "split": "held_out",
                    "correct_before": False, "p_before": 0.1, "p_after": 0.9})  # not judged: the answer is unknown
    prompts.append({"prompt_id": 28, "variant": "heads", "choice": "cost_bounded", "split": "held_out",
                    "correct_before": False, "p_before": 0.3, "p_after": 0.3 + float(np.mean(delta))})
    # judged: the last layer pushed its answer off top-1 (wrong output), so the model knows it
    other = m | {"variant": "mlp_top1", "delta_p": -1.0, "delta_p_lo": -1.0, "delta_p_hi": -1.0}
    return {"mitigation": [other, m], "mitigation_prompts": prompts}


def test_mitigation_is_judged_only_where_the_last_layer_suppresses():
    rng = np.random.default_rng(1)
    leaving = np.r_[np.ones(28, dtype=bool), False, False]  # 28: pushed off top-1; 29: top-1 neither entering nor
    entering = np.r_[np.ones(29, dtype=bool), False]  # leaving the last layer
    suppresses = _lens(np.full(30, 0.6), np.full(30, 0.6) - 0.1 + rng.normal(0, 0.01, 30), leaving, entering)
    raises = _lens(np.full(30, 0.4), np.full(30, 0.4) + 0.2 + rng.normal(0, 0.01, 30), np.ones(30, dtype=bool))
    gain = rng.normal(0.04, 0.01, 20)
    row = JUDGE["mitigation_raises_confidence"](suppresses | _mitigation_rows(gain), CONFIG)
    assert row["verdict"] == HOLDS and row["n"] == 21 and row["value"] == pytest.approx(gain.mean())
    assert row["value_all"] == 0.03
    # finding 8: where the last layer raises the answer there is nothing to undo
    row = JUDGE["mitigation_raises_confidence"](raises | _mitigation_rows(gain), CONFIG)
    assert row["verdict"] == NOT_TESTED and "does not suppress" in row["note"]
    tiny = JUDGE["mitigation_raises_confidence"](suppresses | _mitigation_rows(rng.normal(0.002, 0.001, 20)), CONFIG)
    assert tiny["verdict"] == DOES_NOT  # a null-level gain does not hold
    unsure = JUDGE["mitigation_raises_confidence"](suppresses | _mitigation_rows(rng.normal(0.01, 0.02, 20)), CONFIG)
    assert unsure["verdict"] == INCONCLUSIVE
    bounded = suppresses | _mitigation_rows(gain, alpha=1.0)
    bounded["mitigation"][1]["note"] = "over the cost bound"
    row = JUDGE["mitigation_raises_confidence"](bounded, CONFIG)
    assert row["verdict"] == DOES_NOT and "over the cost bound" in row["note"]
    nothing = suppresses | _mitigation_rows(gain, alpha=1.0, components=())
    assert JUDGE["mitigation_raises_confidence"](nothing, CONFIG)["verdict"] == NOT_TESTED
    assert JUDGE["mitigation_raises_confidence"]({"mitigation": []}, CONFIG)["verdict"] == NOT_TESTED


def _claim(claim, value, verdict="holds", shot=0):
    return {"model": "m", "relation": "r", "shot": shot, "claim": claim, "value": value, "verdict": verdict}


def test_drift_flags_exactly_what_moved():
    before = [_claim("a", 1.0), _claim("b", 0.5), _claim("c", 0.2, "inconclusive"), _claim("gone", 0.1)]
    now = [_claim("a", 1.0), _claim("b", 0.5 + 0.004), _claim("c", 0.2001, "holds"), _claim("new", 0.3)]
    rows = {r["claim"]: r for r in drift_rows(before, now, lambda c: 0.01)}
    assert set(rows) == {"a", "b", "c", "gone", "new"}
    assert not rows["a"]["drifted"] and rows["a"]["difference"] == 0.0
    assert not rows["b"]["drifted"] and rows["b"]["difference"] == pytest.approx(0.004)  # within tolerance
    assert rows["c"]["drifted"] and "verdict inconclusive -> holds" in rows["c"]["reason"]  # whatever the tolerance
    assert rows["gone"]["drifted"] and rows["gone"]["reason"].startswith("missing")
    assert rows["new"]["drifted"] and rows["new"]["reason"].startswith("new")
    tight = {r["claim"]: r for r in drift_rows(before, now, lambda c: 0.001 if c == "b" else 0.01)}
    assert tight["b"]["drifted"] and "tolerance 0.001" in tight["b"]["reason"]
    assert [r["claim"] for r in drift_rows(before[:1], now[:1], lambda c: 0.0) if r["drifted"]] == []
    # Missing values: both missing is no drift; a value appearing or disappearing is.
    gaps = {r["claim"]: r for r in drift_rows(
        [_claim("a", None, "not tested"), _claim("b", float("nan"), "inconclusive"), _claim("c", 0.3)],
        [_claim("a", None, "not tested"), _claim("b", 0.4, "inconclusive"), _claim("c", None, "holds")],
        lambda c: 0.01)}
    assert not gaps["a"]["drifted"] and gaps["a"]["difference"] is None
    assert gaps["b"]["drifted"] and gaps["b"]["reason"] == "value appeared"
    assert gaps["c"]["drifted"] and gaps["c"]["reason"] == "value disappeared"


SPEC = """name = "t"
models = ["smollm2-135m"]
shots = [0]
[[relations]]
name = "paper.capital"
domain = "factual"
"""


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n" + SPEC, "unknown key"),
    (SPEC + "colour = 1\n", "relations.0. has unknown key"),
    (SPEC.replace('domain = "factual"', 'domain = "bias"'), "is in domain 'factual', not 'bias'"),
    (SPEC + "[settings]\nmax_promts = 3\n", "unknown setting"),
    (SPEC + "[settings]\ncoverage = 7.0\n", "coverage = 7.0 is outside"),
    (SPEC + "[tolerance]\nsupresses = 0.1\n", "unknown claim"),
    (SPEC.replace('shots = [0]', 'shots = []'), "shots must be a non-empty list"),
    (SPEC.replace('"paper.capital"', '"paper.capitol"'), "relations[0]"),
    ('baseline = "nowhere.csv"\n' + SPEC, "baseline file"),
    ("name = [", "not valid TOML"),
    (SPEC.replace("shots = [0]", "shots = [0, 0]"), "lists a value twice"),
    (SPEC + '[[relations]]\nname = "paper.capital"\n', "listed twice"),
    (SPEC.replace("shots = [0]", "shots = [true]"), "non-negative integers"),
    ('dtype = "float8"\n' + SPEC, "dtype 'float8' is not one of"),
    (SPEC + '[model_dtypes]\n"gemma3-270m" = "bfloat16"\n', "names 'gemma3-270m', which is not in models"),
    (SPEC + '[model_dtypes]\n"smollm2-135m" = "half"\n', "smollm2-135m = 'half' is not one of"),
    ('model_dtypes = "bfloat16"\n' + SPEC, "model_dtypes must be a table"),
])
def test_bad_specs_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message if "relations.0" in message else message.replace("[", r"\[")
                       .replace("]", r"\]")) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_shipped_specs_load():
    quick, paper = load_spec("paper-quick"), load_spec("paper")
    assert quick.models == ("smollm2-135m",) and quick.shots == (0, 2) and quick.relations == ("paper.capital",)
    assert set(paper.domains.values()) == {"factual", "commonsense", "linguistic", "bias"}
    assert len(paper.relations) == 9 and paper.shots == (0, 1, 2)
    assert paper.tolerance_of("argument_heads") == 0.5 and paper.tolerance_of("task_push") == 0.01
    size, f32, bf16 = load_spec("size-axis"), load_spec("dtype-check"), load_spec("dtype-check-bf16")
    assert size.relations == paper.relations and size.domains == paper.domains and size.shots == paper.shots
    assert set(size.models) == set(PACKAGED) and size.settings == paper.settings
    assert {m: size.dtype_of(m) for m in size.models} == {  # the 1.5B in bfloat16, the others float32
        m: "bfloat16" if m == "qwen2.5-coder-1.5b" else "float32" for m in PACKAGED}
    assert (f32.dtype, bf16.dtype) == ("float32", "bfloat16")  # the pair differs in its dtype only
    assert dataclasses.replace(f32, name=bf16.name, dtype="bfloat16", description=bf16.description,
                               path=bf16.path, text=bf16.text) == bf16
    with pytest.raises(SpecError, match="paper-quick"):
        load_spec("paper-slow")


@pytest.mark.parametrize("k, n", [(0, 19), (20, 20), (7, 30), (1, 3)])
def test_wilson_interval_matches_scipy(k, n):
    import scipy.stats

    from factrecall.tasks.intervals import wilson_interval

    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))
