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


def _heads(n_heads, n_significant, set_order=1):
    return {"head_sets": [{"skipped_reason": None, "n_heads": n_heads, "heads": ["L3.H1"] * n_heads,
                           "n_significant": n_significant, "n_prompts": 40, "no_heads_reason": "none attends"}],
            "head_summary": [
                {"layer": 3, "head": 1, "n": 40, "effect_pct": -12.0, "effect_simul_lo": -20.0, "effect_simul_hi": -4.0,
                 "set_order": set_order, "pearson_r": 0.6, "r_lo": 0.4, "r_hi": 0.75, "mean_attn_to_s": 0.3},
                {"layer": 2, "head": 0, "n": 40, "effect_pct": -30.0, "effect_simul_lo": -50.0, "effect_simul_hi": -1.0,
                 "set_order": None, "pearson_r": 0.1, "r_lo": -0.2, "r_hi": 0.3, "mean_attn_to_s": 0.01}]}


def test_argument_heads_verdicts():
    row = JUDGE["argument_heads"](_heads(1, 2), CONFIG)
    assert row["verdict"] == HOLDS
    assert (row["value"], row["lo"], row["hi"]) == (-12.0, -20.0, -4.0)  # the set's first head, not the strongest
    # Significant heads that fail the attention filter (a point estimate) are no evidence of absence.
    assert JUDGE["argument_heads"](_heads(0, 2, None), CONFIG)["verdict"] == INCONCLUSIVE
    none = JUDGE["argument_heads"](_heads(0, 0, None), CONFIG)
    assert none["verdict"] == INCONCLUSIVE and none["value"] == -30.0  # the strongest head is reported
    skipped = {"head_sets": [{"skipped_reason": "fewer than 2 subjects"}], "head_summary": []}
    assert JUDGE["argument_heads"](skipped, CONFIG)["verdict"] == NOT_TESTED
    assert JUDGE["heads_copy_subject"](_heads(1, 1), CONFIG)["verdict"] == HOLDS
    negative = _heads(1, 1)
    negative["head_summary"][0] |= {"pearson_r": -0.5, "r_lo": -0.7, "r_hi": -0.2}
    assert JUDGE["heads_copy_subject"](negative, CONFIG)["verdict"] == DOES_NOT
    negative["head_summary"][0] |= {"pearson_r": 0.1, "r_lo": -0.1, "r_hi": 0.3}
    assert JUDGE["heads_copy_subject"](negative, CONFIG)["verdict"] == INCONCLUSIVE
    assert JUDGE["heads_copy_subject"](_heads(0, 0, None), CONFIG)["verdict"] == NOT_TESTED


def _mlp(r2=(), betas=(), swaps=(), push=(0.5, 0.2, 0.8)):
    return {
        "head_sets": [{"skipped_reason": None}],
        "function_application": [{"skipped_reason": None, "push": push[0], "push_lo": push[1], "push_hi": push[2],
                                  "push_n": 30, "best_layer": 7}],
        "regression_layers": [{"layer": 5, "holds_head_set_head": True}, {"layer": 6, "holds_head_set_head": False}],
        "regression_prompts": [{"prompt_id": i, "layer": layer, "r2": v, "singular": False}
                               for i, (a, b) in enumerate(r2) for layer, v in ((5, a), (6, b))],
        "regression_betas": [{"layer": 5, "head": h, "beta": b, "in_head_set": True}
                             for h, col in enumerate(betas) for b in col],
        "argument_swap": [{"eligible": e, "success": s, "chance_success": c} for e, s, c in swaps],
    }


def test_mlp_linear_uses_head_set_layers_and_the_threshold():
    rng = np.random.default_rng(0)
    high = rng.uniform(0.7, 0.9, 40)
    up = _mlp(r2=[(a, 0.0) for a in high])  # layer 6 holds no head-set head: its R² of 0 is ignored
    row = JUDGE["mlp_linear"](up, CONFIG)
    assert row["value"] == pytest.approx(high.mean()) and row["n"] == 40 and row["threshold"] == 0.5
    assert row["verdict"] == HOLDS
    low = JUDGE["mlp_linear"](_mlp(r2=[(a - 0.6, 1.0) for a in high]), CONFIG)
    assert low["verdict"] == DOES_NOT
    strict = JUDGE["mlp_linear"](up, ClaimsConfig(n_boot=400, r2_threshold=0.95))
    assert strict["verdict"] == DOES_NOT and strict["threshold"] == 0.95


def test_mlp_scales_heads_needs_an_interval_excluding_zero():
    rng = np.random.default_rng(2)
    up = _mlp(betas=[rng.normal(0.0, 1.0, 50), rng.normal(-0.8, 0.1, 50)])
    row = JUDGE["mlp_scales_heads"](up, CONFIG)
    second = [r["beta"] for r in up["regression_betas"] if r["head"] == 1]
    assert row["verdict"] == HOLDS and row["value"] == pytest.approx(np.mean(second))  # the largest |mean beta|
    assert "L5.H1 (erased)" in row["note"]
    # The reported head is a scaled one even when an unscaled head has a larger |mean beta|.
    wide, narrow = rng.normal(1.5, 10.0, 50), rng.normal(0.6, 0.05, 50)
    mixed = JUDGE["mlp_scales_heads"](_mlp(betas=[wide, narrow]), CONFIG)
    assert mixed["verdict"] == HOLDS and mixed["value"] == pytest.approx(narrow.mean()) and mixed["lo"] > 0
    assert "L5.H1 (amplified)" in mixed["note"] and "L5.H0" not in mixed["note"].split("scaled")[1]
    # A per-column interval would call this head scaled; the simultaneous one over 4 heads does not.
    se = 0.5 / np.sqrt(50)
    edge = rng.normal(0.0, 1.0, 50)
    edge = (edge - edge.mean()) / edge.std(ddof=1) * 0.5 + 2.2 * se  # mean 2.2 se: 1.96 < 2.2 < 2.50
    others = [np.r_[np.full(25, 0.01), np.full(25, -0.01)] for _ in range(3)]
    assert JUDGE["mlp_scales_heads"](_mlp(betas=[edge, *others]), ClaimsConfig(n_boot=4000))["verdict"] == INCONCLUSIVE
    assert JUDGE["mlp_scales_heads"](_mlp(betas=[edge]), ClaimsConfig(n_boot=4000))["verdict"] == HOLDS
    singular = JUDGE["mlp_scales_heads"](_mlp(betas=[np.full(10, np.nan)]), CONFIG)
    assert singular["verdict"] == NOT_TESTED


def test_task_push_and_argument_swap():
    assert JUDGE["task_push"](_mlp(), CONFIG)["verdict"] == HOLDS
    assert JUDGE["task_push"](_mlp(push=(-0.5, -0.8, -0.2)), CONFIG)["verdict"] == DOES_NOT
    assert JUDGE["task_push"](_mlp(push=(0.1, -0.2, 0.4)), CONFIG)["verdict"] == INCONCLUSIVE
    beats = [(True, True, False)] * 20 + [(False, False, False)] * 5  # ineligible rows do not count
    row = JUDGE["argument_swap"](_mlp(swaps=beats), CONFIG)
    assert row["verdict"] == HOLDS and row["value"] == 1.0 and row["n"] == 20
    chance = [(True, True, True)] * 10 + [(True, False, False)] * 10
    assert JUDGE["argument_swap"](_mlp(swaps=chance), CONFIG)["value"] == 0.0
    assert JUDGE["argument_swap"](_mlp(swaps=[(False, False, False)]), CONFIG)["verdict"] == NOT_TESTED
    skipped = {"function_application": [{"skipped_reason": "no argument-passing heads"}]}
    assert all(JUDGE[c](skipped, CONFIG)["verdict"] == NOT_TESTED
               for c in ("mlp_linear", "mlp_scales_heads", "task_push", "argument_swap"))


def test_final_layer_and_mitigation():
    s = {"delta_p": -0.1, "delta_p_lo": -0.15, "delta_p_hi": -0.05, "n": 40, "suppressors": ["L29.H3"]}
    assert JUDGE["final_layer_suppresses"]({"final_layer_summary": [s]}, CONFIG)["verdict"] == HOLDS
    assert JUDGE["final_layer_suppresses"]({"final_layer_summary": [s | {"delta_p_hi": 0.01}]}, CONFIG)["verdict"] \
        == INCONCLUSIVE
    m = {"variant": "heads", "choice": "cost_bounded", "alpha": 0.5, "components": ["L29.H3"], "delta_p": 0.03,
         "delta_p_lo": 0.01, "delta_p_hi": 0.05, "n_held_out": 20, "note": None}
    other = m | {"variant": "mlp_top1", "delta_p": -1.0, "delta_p_lo": -1.0, "delta_p_hi": -1.0}
    assert JUDGE["mitigation_raises_confidence"]({"mitigation": [other, m]}, CONFIG)["verdict"] == HOLDS
    bounded = m | {"alpha": 1.0, "delta_p": 0.0, "delta_p_lo": 0.0, "delta_p_hi": 0.0, "note": "over the cost bound"}
    row = JUDGE["mitigation_raises_confidence"]({"mitigation": [bounded]}, CONFIG)
    assert row["verdict"] == DOES_NOT and "over the cost bound" in row["note"]
    nothing = bounded | {"components": [], "note": "no component suppresses"}
    row = JUDGE["mitigation_raises_confidence"]({"mitigation": [nothing]}, CONFIG)
    assert row["verdict"] == NOT_TESTED and "no component suppresses" in row["note"]
    few = m | {"n_held_out": 4}
    row = JUDGE["mitigation_raises_confidence"]({"mitigation": [few]}, CONFIG)
    assert row["verdict"] == INCONCLUSIVE and "only 4 prompts" in row["note"]
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
