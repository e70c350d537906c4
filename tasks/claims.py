"""The paper's claims as verdicts on one partition's stored statistics (docs/METHOD.md §10).

Every claim is one row: the statistic that tests it (``value`` with its interval ``lo``/``hi`` and its
``n``) on the prompts the model answers correctly (``*_all``: the same over every prompt, kept beside), the
threshold the interval is compared with (an effect size the claim needs, not only "not zero"), the stated null
(``null_value``), and a verdict:

- ``holds``: the interval lies entirely on the claimed side of the threshold;
- ``does not``: it lies entirely on the other side (each rule states its further cases);
- ``inconclusive``: the interval straddles the threshold, or it rests on fewer than ``MIN_N`` prompts;
- ``not tested``: an upstream step was skipped, has nothing to test, or the model answers fewer than
  ``MIN_N`` prompts correctly (``note`` says why).

The rules are pure functions of upstream rows (dicts of one partition's tables), so they are tested
without a model. ``CLAIMS`` lists them in the order of the paper's steps; ``judge_all`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .intervals import MIN_N, bootstrap_indices, mean_ci_fields, wilson_interval

__all__ = ["CLAIMS", "Claim", "HOLDS", "DOES_NOT", "INCONCLUSIVE", "NOT_TESTED", "VERDICTS", "interval_verdict",
           "judge_all", "simultaneous_mean_ci"]

HOLDS, DOES_NOT, INCONCLUSIVE, NOT_TESTED = "holds", "does not", "inconclusive", "not tested"
VERDICTS = (HOLDS, DOES_NOT, INCONCLUSIVE, NOT_TESTED)


@dataclass(frozen=True)
class Claim:
    name: str
    step: int  # the paper's step (1-4)
    text: str  # the claim, as the report prints it
    statistic: str  # what ``value`` is
    rule: str  # how the verdict follows from the interval: the effect size and the null
    source: str  # the stage whose result holds the statistic
    judge: Callable[[dict, object], dict]  # (upstream rows, config) -> row fields


def interval_verdict(lo: float | None, hi: float | None, threshold: float, side: str) -> str:
    """``side`` "above": holds when lo > threshold, does not when hi < threshold; "below": the mirror image;
    "nonzero": holds when the interval excludes the threshold. Inconclusive otherwise or without an interval."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if side == "above":
        return HOLDS if lo > threshold else DOES_NOT if hi < threshold else INCONCLUSIVE
    if side == "below":
        return HOLDS if hi < threshold else DOES_NOT if lo > threshold else INCONCLUSIVE
    if side == "nonzero":
        return HOLDS if lo > threshold or hi < threshold else INCONCLUSIVE
    raise ValueError(f"side must be above, below or nonzero; got {side!r}")


def simultaneous_mean_ci(columns: list[np.ndarray], n_boot: int, seed: int,
                         level: float = 0.95) -> list[tuple[float, float | None, float | None]]:
    """(mean, lo, hi) of each column (its finite values), simultaneous over the k columns: mean ± z se with
    z = Φ⁻¹(1 − (1 − level)/(2k)) (Bonferroni) and se the bootstrap standard error; no interval under 2 values."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * max(1, len(columns))))
    out = []
    for k, col in enumerate(columns):
        x = np.asarray(col, dtype=np.float64)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            out.append((float("nan"), None, None))
            continue
        if len(x) < 2:
            out.append((float(x.mean()), None, None))
            continue
        se = float(x[bootstrap_indices(len(x), n_boot, seed + k)].mean(1).std(ddof=1))
        out.append((float(x.mean()), float(x.mean() - z * se), float(x.mean() + z * se)))
    return out


def simultaneous_from_se(values: list[float], se: list[float], level: float = 0.95) -> list[tuple[float, float]]:
    """Bonferroni-simultaneous normal intervals value ± z se over the k values (z = Φ⁻¹(1 − (1 − level)/(2k)))."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / (2 * max(1, len(values))))
    return [(v - z * e, v + z * e) for v, e in zip(values, se)]


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _row(value=None, lo=None, hi=None, n=None, threshold=0.0, verdict=NOT_TESTED, note=None, null=None,
         value_all=None, lo_all=None, hi_all=None, n_all=None) -> dict:
    """One claim's fields. ``value``/``lo``/``hi``/``n`` are on the judged prompts (answered correctly); ``*_all``
    the same statistic over every prompt, kept beside; ``null`` the stated null's value."""
    if verdict in (HOLDS, DOES_NOT) and n is not None and n < MIN_N:
        verdict, note = INCONCLUSIVE, f"only {n} prompts (fewer than {MIN_N}): no verdict; " + (note or "")
    return {"value": _num(value), "lo": _num(lo), "hi": _num(hi), "n": None if n is None else int(n),
            "threshold": float(threshold), "null_value": _num(null), "verdict": verdict, "note": note,
            "value_all": _num(value_all), "lo_all": _num(lo_all), "hi_all": _num(hi_all),
            "n_all": None if n_all is None else int(n_all)}


def _first(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _skip_reason(up: dict, table: str, stage: str) -> str | None:
    """Why ``stage`` has nothing to judge here: no row in its one-row ``table``, or the row's skip reason."""
    row = _first(up.get(table, []))
    return f"the {stage} stage has no result for this partition" if row is None else row.get("skipped_reason")


def _too_few_correct(n_correct: int | None, n: int | None,
                     known: str = "the model answers {k} of {n} prompts correctly") -> str | None:
    """The not-tested reason when fewer than MIN_N prompts are answered correctly (claims are judged on those)."""
    if n_correct is None or n_correct >= MIN_N:
        return None
    acc = f" (accuracy {n_correct / n:.2f})" if n else ""
    return (known.format(k=n_correct, n=n) + f"{acc}; the claims are judged on the prompts whose answer the model "
            f"knows and need at least {MIN_N}")


def _gate(up: dict, table: str, stage: str) -> str | None:
    """Why ``stage``'s claims are not tested here: it was skipped, or too few prompts are answered correctly
    (``table`` is its one-row summary, with ``n_correct`` and ``n_prompts``)."""
    skipped = _skip_reason(up, table, stage)
    if skipped:
        return f"{stage} skipped: {skipped}"
    row = up[table][0]
    return _too_few_correct(row.get("n_correct"), row.get("n_prompts"))


def _heads_gate(up: dict) -> str | None:
    return _gate(up, "head_sets", "heads")


# -- step 1 ------------------------------------------------------------------------------------------------
def _argument_heads(up: dict, config) -> dict:
    bound = -config.min_effect
    gate = _heads_gate(up)
    if gate:
        return _row(threshold=bound, note=gate)
    sets = up["head_sets"][0]
    summary = [r for r in up.get("head_summary", []) if r["effect_simul_lo"] is not None]
    if not summary:
        return _row(threshold=bound, note="no head statistics")
    attending = [r for r in summary if r["attention_passes"]]
    if sets["n_heads"]:
        in_set = sorted((r for r in summary if r["set_order"] is not None), key=lambda r: r["set_order"])
        beyond = [r for r in in_set if r["effect_simul_hi"] < bound]  # simultaneous intervals: any may decide
        head = beyond[0] if beyond else in_set[0]
        verdict = HOLDS if beyond else INCONCLUSIVE
        note = (f"head set {', '.join(sets['heads'])}; L{head['layer']}.H{head['head']}'s effect is "
                + ("beyond" if verdict == HOLDS else "not significantly beyond") + f" {bound:g}%"
                + ("" if verdict == HOLDS else " (nor is any other set head's)"))
    elif attending and all(r["effect_simul_lo"] > bound for r in attending):
        head = min(attending, key=lambda r: r["effect_simul_lo"])
        verdict, note = DOES_NOT, (f"no head that attends to the subject (of {len(attending)}) can move M by "
                                   f"{config.min_effect:g}%: every simultaneous interval lies above {bound:g}")
    else:
        head = min(attending or summary, key=lambda r: r["effect_pct"])
        verdict = INCONCLUSIVE
        note = (sets.get("no_heads_reason") or "no head set") + (
            "" if attending else "; no head passes the attention filter (a point estimate: no evidence of absence)")
    return _row(head["effect_pct"], head["effect_simul_lo"], head["effect_simul_hi"], sets["n_correct"], bound,
                verdict, note, null=0.0, value_all=head.get("effect_all_pct"), lo_all=head.get("effect_all_lo"),
                hi_all=head.get("effect_all_hi"), n_all=sets["n_prompts"])


def _heads_copy_subject(up: dict, config) -> dict:
    gate = _heads_gate(up)
    if gate:
        return _row(threshold=config.copy_threshold, note=gate)
    top = [r for r in up.get("head_summary", []) if r["set_order"] == 1]
    if not top:
        return _row(threshold=config.copy_threshold, note="no argument-passing heads to test")
    r = top[0]
    verdict = interval_verdict(r["copy_auc_lo"], r["copy_auc_hi"], config.copy_threshold, "above")
    pearson = ("n/a" if r["pearson_r"] is None else
               f"{r['pearson_r']:.2f} [{_fmt(r['r_lo'])}, {_fmt(r['r_hi'])}]")
    return _row(r["copy_auc"], r["copy_auc_lo"], r["copy_auc_hi"], r["copy_n"], config.copy_threshold, verdict,
                f"L{r['layer']}.H{r['head']}: mean attention END->S {r['mean_attn_to_s']:.3f}, the subject its "
                f"largest target in {_pct(r['subject_top_share'])}; Pearson r (attention vs DLA onto the subject, "
                f"secondary) {pearson}", null=0.5, value_all=r.get("copy_auc_all"),
                n_all=_minus(up["head_sets"][0].get("n_prompts"), up["head_sets"][0].get("n_answer_in_subject")))


# -- steps 2 and 3 ---------------------------------------------------------------------------------------
def _mlp_gate(up: dict) -> str | None:
    return _gate(up, "function_application", "mlp")


def _mlp_linear(up: dict, config) -> dict:
    gate = _mlp_gate(up)
    if gate:
        return _row(threshold=config.r2_threshold, note=gate)
    fa = up["function_application"][0]
    if fa.get("pooled_r2") is None:
        return _row(threshold=config.r2_threshold, note="design B is singular at a head-set layer: no R²")
    lo, hi, null_q = fa["pooled_r2_lo"], fa["pooled_r2_hi"], fa["pooled_r2_null_q95"]
    bar = max(config.r2_threshold, null_q if null_q is not None else 0.0)
    if lo is None or hi is None:
        verdict = INCONCLUSIVE
    elif lo > bar:
        verdict = HOLDS
    elif hi < config.r2_threshold or (null_q is not None and hi < null_q):
        verdict = DOES_NOT
    else:
        verdict = INCONCLUSIVE
    layers = sorted({r["layer"] for r in up.get("regression_layers", []) if r["holds_head_set_head"]})
    return _row(fa["pooled_r2"], lo, hi, fa.get("pooled_r2_n"), config.r2_threshold, verdict,
                f"design B (task-shared betas and intercept) at head-set layers {layers}; shuffled-prompt null R² "
                f"{_fmt(fa.get('pooled_r2_null'))} (95th percentile {_fmt(null_q)})",
                null=fa.get("pooled_r2_null"), value_all=fa.get("pooled_r2_all"), n_all=fa.get("n_prompts"))


def _mlp_scales_heads(up: dict, config) -> dict:
    bound = config.beta_bound
    gate = _mlp_gate(up)
    if gate:
        return _row(threshold=bound, note=gate)
    heads = [r for r in up.get("regression_heads", []) if r["in_head_set"]]
    fitted = [r for r in heads if r["pooled_beta"] is not None and r["pooled_beta_se"] is not None]
    if not fitted:
        return _row(threshold=bound, note="no head-set head has a design B coefficient (singular design)")
    cis = simultaneous_from_se([r["pooled_beta"] for r in fitted], [r["pooled_beta_se"] for r in fitted])
    beyond = [k for k, (lo, hi) in enumerate(cis) if lo > bound or hi < -bound]
    within = all(-bound < lo and hi < bound for lo, hi in cis)
    k = max(beyond or range(len(fitted)), key=lambda j: abs(fitted[j]["pooled_beta"]))
    verdict = HOLDS if beyond else DOES_NOT if within else INCONCLUSIVE
    r = fitted[k]
    names = ", ".join(f"L{h['layer']}.H{h['head']} {h['pooled_beta']:+.2f} ({h['pooled_label']})" for h in fitted)
    layers = {h["layer"] for h in fitted}
    standing = [(l["median_subject_rank_before"], l["median_subject_rank_after"])
                for l in up.get("regression_layers", []) if l["layer"] in layers
                and l.get("median_subject_rank_before") is not None]
    stand = "; ".join(f"{b:g} -> {a:g}" for b, a in standing)
    return _row(r["pooled_beta"], cis[k][0], cis[k][1], up["function_application"][0].get("n_correct"), bound,
                verdict, f"reported: L{r['layer']}.H{r['head']}; design B betas: {names}; the subject's median rank "
                f"in the residual before -> after the MLP: {stand or 'n/a'}", null=0.0,
                value_all=r.get("pooled_beta_all"), n_all=up["function_application"][0].get("n_prompts"))


def _task_push(up: dict, config) -> dict:
    gate = _mlp_gate(up)
    if gate:
        return _row(threshold=config.push_bound, note=gate)
    fa = up["function_application"][0]
    if fa.get("push") is None:
        reason = ("the prompts have fewer than 2 distinct answers: no answer-specific push" if fa.get("push_raw") is None
                  and fa.get("push_mlp") is None else "no prompt with a task-aware component (singular design)")
        return _row(threshold=config.push_bound, note=reason)
    note = (f"layers {fa['best_layer']} and {fa.get('best_layer_b')} (each chosen by one half of the prompts, the "
            f"other half judged there); c's push {_fmt(fa.get('push_raw'))} "
            f"against its shuffled-prompt null {_fmt(fa.get('push_null'))}; the MLP output's own push minus null "
            f"{_fmt(fa.get('push_mlp'))} [{_fmt(fa.get('push_mlp_lo'))}, {_fmt(fa.get('push_mlp_hi'))}]; the shared "
            f"intercept's {_fmt(fa.get('push_intercept'))}")
    return _row(fa["push"], fa["push_lo"], fa["push_hi"], fa["push_n"], config.push_bound,
                interval_verdict(fa["push_lo"], fa["push_hi"], config.push_bound, "above"), note,
                null=0.0, value_all=fa.get("push_all"), lo_all=fa.get("push_all_lo"), hi_all=fa.get("push_all_hi"),
                n_all=fa.get("push_all_n"))


def _argument_swap(up: dict, config) -> dict:
    bound = config.swap_threshold
    gate = _mlp_gate(up)
    if gate:
        return _row(threshold=bound, note=gate)
    rows = [r for r in up.get("argument_swap", []) if r["eligible"]]
    excluded = sum(bool(r.get("excluded_answer_in_subject")) for r in up.get("argument_swap", []))
    if not rows:
        return _row(threshold=bound, note="no eligible prompt (X's object the greedy answer before, the objects "
                                          f"distinguishable, no subject copy; {excluded} excluded as subject copies)")
    n, k, kc = len(rows), sum(bool(r["success"]) for r in rows), sum(bool(r["chance_success"]) for r in rows)
    lo, hi = wilson_interval(k, n)
    c_lo, c_hi = wilson_interval(kc, n)
    if lo > bound and lo > c_hi:
        verdict = HOLDS
    elif hi < bound or hi < c_lo:
        verdict = DOES_NOT
    else:
        verdict = INCONCLUSIVE
    return _row(k / n, lo, hi, n, bound, verdict,
                f"success {k}/{n} against chance {kc}/{n} [{c_lo:.3f}, {c_hi:.3f}] (random head sets of the same "
                f"size); {excluded} prompts left out (an answer token is a subject token)", null=kc / n)


# -- step 4 ----------------------------------------------------------------------------------------------
def _last_layer_deltas(up: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per prompt Δp(answer) across the last layer and whether the model knows the answer there: it is top-1
    entering or leaving the last layer (selecting on the output alone would drop the prompts the last layer
    pushed off top-1, the suppression the claim is about), from ``lens``. Returns (delta, known, prompt ids)."""
    lens = up.get("lens", [])
    if not lens:
        return None
    last = max(r["layer"] for r in lens)
    by = {}
    for r in lens:
        if r["layer"] in (last - 1, last):
            by.setdefault(r["prompt_id"], {})[r["layer"]] = r
    pids = sorted(p for p, v in by.items() if len(v) == 2)
    delta = np.array([by[p][last]["p_answer"] - by[p][last - 1]["p_answer"] for p in pids], dtype=np.float64)
    correct = np.array([by[p][last]["rank_answer"] == 0 or by[p][last - 1]["rank_answer"] == 0 for p in pids])
    return delta, correct, np.array(pids)


def _final_layer_suppresses(up: dict, config) -> dict:
    bound = -config.suppression_bound
    s = _first(up.get("final_layer_summary", []))
    deltas = _last_layer_deltas(up)
    if s is None or deltas is None:
        return _row(threshold=bound, note="the final_layer stage has no summary for this partition")
    delta, correct, _ = deltas
    gate = _too_few_correct(int(correct.sum()), len(correct),
                            "the answer is top-1 entering or leaving the last layer in {k} of {n} prompts")
    alls = dict(value_all=s["delta_p"], lo_all=s["delta_p_lo"], hi_all=s["delta_p_hi"], n_all=s["n"])
    if gate:
        return _row(threshold=bound, note=gate, **alls)
    f = mean_ci_fields("d", delta[correct], config.n_boot, config.seed)
    return _row(f["d"], f["d_lo"], f["d_hi"], int(correct.sum()), bound,
                interval_verdict(f["d_lo"], f["d_hi"], bound, "below"),
                f"suppressors: {', '.join(s['suppressors']) or 'none'}; judged on the prompts whose answer is top-1 "
                f"entering or leaving the last layer",
                null=0.0, **alls)


def _mitigation_raises_confidence(up: dict, config, suppression: dict | None = None) -> dict:
    bound = config.gain_bound
    rows = [r for r in up.get("mitigation", []) if r["variant"] == "heads" and r["choice"] == "cost_bounded"]
    if not rows:
        return _row(threshold=bound, note="no cost-bounded mitigation of the suppressing heads")
    m = rows[0]
    note = f"alpha {m['alpha']:g} on {', '.join(m['components']) or 'no component'}"
    if m.get("note"):
        note += f"; {m['note']}"
    alls = dict(value_all=m["delta_p"], lo_all=m["delta_p_lo"], hi_all=m["delta_p_hi"], n_all=m["n_held_out"])
    if suppression is None:
        suppression = _final_layer_suppresses(up, config)
    if suppression["verdict"] != HOLDS:  # nothing to undo: the claim presupposes the suppression
        return _row(threshold=bound, note=f"the last layer does not suppress the answer here "
                                          f"({suppression['verdict']}): nothing to undo; {note}", **alls)
    if not m["components"]:  # no head suppresses on the calibration half: no suppression to undo
        return _row(threshold=bound, n=m["n_held_out"], note=note, **alls)
    deltas = _last_layer_deltas(up)  # the prompts whose answer the model knows: as for the suppression
    known = set() if deltas is None else set(deltas[2][deltas[1]].tolist())
    held = [r for r in up.get("mitigation_prompts", []) if r["variant"] == "heads" and r["choice"] == "cost_bounded"
            and r["split"] == "held_out" and r["prompt_id"] in known]
    delta = np.array([r["p_after"] - r["p_before"] for r in held], dtype=np.float64)
    if m["alpha"] == 1.0:  # suppressing heads, but no scale within the cost bound: it raised nothing
        return _row(0.0, 0.0, 0.0, len(held), bound, DOES_NOT, note, **alls)
    f = mean_ci_fields("d", delta, config.n_boot, config.seed)
    return _row(f["d"], f["d_lo"], f["d_hi"], len(held), bound,
                interval_verdict(f["d_lo"], f["d_hi"], bound, "above"),
                note + "; held-out prompts whose answer is top-1 entering or leaving the last layer",
                null=0.0, **alls)


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.0%}"


def _minus(a, b):
    return None if a is None or b is None else a - b


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3g}"


def judge_all(up: dict, config) -> list[tuple["Claim", dict]]:
    """Every claim's row fields on one partition's upstream rows, in ``CLAIMS`` order (the mitigation claim reads
    the suppression verdict it presupposes)."""
    out, suppression = [], None
    for claim in CLAIMS:
        if claim.name == "mitigation_raises_confidence":
            fields = _mitigation_raises_confidence(up, config, suppression)
        else:
            fields = claim.judge(up, config)
        if claim.name == "final_layer_suppresses":
            suppression = fields
        out.append((claim, fields))
    return out


CLAIMS: tuple[Claim, ...] = (
    Claim("argument_heads", 1, "Argument-passing heads exist",
          "path-patching effect% of the first head-set head whose interval lies below -min_effect (else of the set's "
          "first head; simultaneous 95% interval over all heads), prompts answered correctly",
          "holds: the head set is non-empty and a set head's interval lies below -min_effect; does not: every "
          "head that passes the attention filter (median, floor, the subject its largest target) has its interval "
          "above -min_effect; null: 0 (no effect)", "heads", _argument_heads),
    Claim("heads_copy_subject", 1, "They copy the subject to the last token",
          "copy AUC of the set's first head: the share of the relation's other subjects its own subject beats in "
          "the head's logit lens (95% interval), prompts answered correctly whose answer is not a subject token",
          "holds: the interval lies above copy_threshold; does not: below it; null: 0.5 (no preference, the "
          "shuffled-subject control)", "heads", _heads_copy_subject),
    Claim("mlp_linear", 2, "The next MLP's output is a linear combination of the heads'",
          "design B R² (task-shared betas and intercept) averaged over the head-set layers (95% interval), prompts "
          "answered correctly",
          "holds: the interval lies above r2_threshold and the shuffled-prompt null's 95th percentile; does not: it "
          "lies below r2_threshold, or below the null's 95th percentile", "mlp", _mlp_linear),
    Claim("mlp_scales_heads", 2, "The MLP erases or amplifies the heads' outputs",
          "design B β of the head-set head with the largest |β| beyond the bound (else of any set head); "
          "simultaneous 95% interval over the set's heads",
          "holds: some set head's interval lies beyond ±beta_bound (erased, reversed or amplified by at least "
          "that); does not: every set head's interval lies within ±beta_bound; null: 0 (the head passes unscaled)",
          "mlp", _mlp_scales_heads),
    Claim("task_push", 3, "A task-aware MLP component pushes the answer",
          "push of c = m - Σβ_B o toward the answer over the relation's other objects, minus the same c's push toward "
          "the other prompts' answers (2-fold cross-fitted: each half's c and layer come from the other half), "
          "prompts answered correctly (95% interval)",
          "holds: the interval lies above push_bound; does not: below it; null: 0 (c does not follow the prompt's "
          "own answer)", "mlp", _task_push),
    Claim("argument_swap", 3, "Swapping the heads' argument swaps the answer",
          "share of eligible prompts whose prediction becomes X''s object when the head set's outputs at END are "
          "replaced by their values in the run about X' (Wilson 95% interval)",
          "holds: the interval lies above swap_threshold and above the chance rate's interval (random head sets); "
          "does not: it lies below swap_threshold or below the chance rate's interval", "mlp", _argument_swap),
    Claim("final_layer_suppresses", 4, "The final layer suppresses the answer",
          "Δp(answer) across the last layer, prompts whose answer is top-1 entering or leaving it (95% interval)",
          "holds: the interval lies below -suppression_bound; does not: above it; null: 0", "final_layer",
          _final_layer_suppresses),
    Claim("mitigation_raises_confidence", 4, "Undoing the suppression raises held-out confidence",
          "held-out Δp(answer) of the cost-bounded mitigation of the suppressing heads, held-out prompts whose answer "
          "is top-1 entering or leaving the last layer (95% interval)",
          "holds: the interval lies above gain_bound; does not: below it, or no scale of the suppressing heads is "
          "within the cost bound (α = 1); not tested: the last layer does not suppress (final_layer_suppresses "
          "does not hold) or no head suppresses", "final_layer", _mitigation_raises_confidence),
)
