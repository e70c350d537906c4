"""The paper's claims as verdicts on one partition's stored statistics (docs/METHOD.md §10).

Every claim is one row: the statistic that tests it (``value`` with its interval ``lo``/``hi`` and its
``n``), the threshold the interval is compared with, and a verdict:

- ``holds``: the interval lies entirely on the claimed side of the threshold;
- ``does not``: it lies entirely on the other side (the mitigation claim also when nothing within the
  cost bound changes anything, as its rule states);
- ``inconclusive``: the interval straddles the threshold, or it rests on fewer than ``MIN_N`` prompts;
- ``not tested``: an upstream step was skipped or has nothing to test (``note`` says why).

The rules are pure functions of upstream rows (dicts of one partition's tables), so they are tested
without a model. ``CLAIMS`` lists them in the order of the paper's steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .intervals import bootstrap_indices, mean_ci_fields

__all__ = ["CLAIMS", "Claim", "HOLDS", "DOES_NOT", "INCONCLUSIVE", "NOT_TESTED", "VERDICTS", "interval_verdict",
           "simultaneous_mean_ci"]

HOLDS, DOES_NOT, INCONCLUSIVE, NOT_TESTED = "holds", "does not", "inconclusive", "not tested"
#: Fewer prompts than this make a percentile-bootstrap interval too optimistic to decide on: inconclusive.
MIN_N = 10
VERDICTS = (HOLDS, DOES_NOT, INCONCLUSIVE, NOT_TESTED)


@dataclass(frozen=True)
class Claim:
    name: str
    step: int  # the paper's step (1-4)
    text: str  # the claim, as the report prints it
    statistic: str  # what ``value`` is
    rule: str  # how the verdict follows from the interval
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


def _row(value=None, lo=None, hi=None, n=None, threshold=0.0, verdict=NOT_TESTED, note=None) -> dict:
    num = lambda x: None if x is None or not np.isfinite(x) else float(x)  # noqa: E731
    if verdict in (HOLDS, DOES_NOT) and n is not None and n < MIN_N:
        verdict, note = INCONCLUSIVE, f"only {n} prompts (fewer than {MIN_N}): no verdict; " + (note or "")
    return {"value": num(value), "lo": num(lo), "hi": num(hi), "n": None if n is None else int(n),
            "threshold": float(threshold), "verdict": verdict, "note": note}


def _first(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _skip_reason(up: dict, table: str, stage: str) -> str | None:
    """Why ``stage`` has nothing to judge here: no row in its one-row ``table``, or the row's skip reason."""
    row = _first(up.get(table, []))
    return f"the {stage} stage has no result for this partition" if row is None else row.get("skipped_reason")


def _skipped(up: dict) -> str | None:
    return _skip_reason(up, "head_sets", "heads")


# -- step 1 ------------------------------------------------------------------------------------------------
def _argument_heads(up: dict, config) -> dict:
    skipped = _skipped(up)
    if skipped:
        return _row(note=f"heads skipped: {skipped}")
    sets = up["head_sets"][0]
    summary = up.get("head_summary", [])
    if not summary:
        return _row(note="no head statistics")
    strongest = min(summary, key=lambda r: (r["set_order"] is None, r["set_order"] or 0, r["effect_pct"]))
    if sets["n_heads"]:
        verdict, note = HOLDS, f"head set {', '.join(sets['heads'])}"
    elif sets["n_significant"]:  # the attention filter is a point estimate: not evidence of absence
        verdict, note = INCONCLUSIVE, (f"{sets['n_significant']} head(s) significantly lower the answer's logit but "
                                       "none passes the attention filter: " + (sets.get("no_heads_reason") or ""))
    else:
        verdict, note = INCONCLUSIVE, "no head's effect is significantly below 0 (simultaneous intervals)"
    return _row(strongest["effect_pct"], strongest["effect_simul_lo"], strongest["effect_simul_hi"], sets["n_prompts"],
                0.0, verdict, note)


def _heads_copy_subject(up: dict, config) -> dict:
    skipped = _skipped(up)
    if skipped:
        return _row(note=f"heads skipped: {skipped}")
    top = [r for r in up.get("head_summary", []) if r["set_order"] == 1]
    if not top:
        return _row(note="no argument-passing heads to test")
    r = top[0]
    verdict = interval_verdict(r["r_lo"], r["r_hi"], 0.0, "above")
    return _row(r["pearson_r"], r["r_lo"], r["r_hi"], r["n"], 0.0, verdict,
                f"L{r['layer']}.H{r['head']}: mean attention END->S {r['mean_attn_to_s']:.3f}")


# -- steps 2 and 3 ---------------------------------------------------------------------------------------
def _mlp_skipped(up: dict) -> str | None:
    return _skip_reason(up, "function_application", "mlp")


def _mlp_linear(up: dict, config) -> dict:
    skipped = _mlp_skipped(up)
    if skipped:
        return _row(threshold=config.r2_threshold, note=f"mlp skipped: {skipped}")
    layers = {r["layer"] for r in up.get("regression_layers", []) if r["holds_head_set_head"]}
    by_prompt: dict[int, list[float]] = {}
    for r in up.get("regression_prompts", []):
        if r["layer"] in layers and not r["singular"] and r["r2"] is not None and np.isfinite(r["r2"]):
            by_prompt.setdefault(r["prompt_id"], []).append(r["r2"])
    values = np.array([np.mean(v) for _, v in sorted(by_prompt.items())])
    if len(values) == 0:
        return _row(threshold=config.r2_threshold, note="no non-singular regression at a head-set layer")
    f = mean_ci_fields("r2", values, config.n_boot, config.seed)
    return _row(f["r2"], f["r2_lo"], f["r2_hi"], len(values), config.r2_threshold,
                interval_verdict(f["r2_lo"], f["r2_hi"], config.r2_threshold, "above"),
                f"head-set layers {sorted(layers)}")


def _mlp_scales_heads(up: dict, config) -> dict:
    skipped = _mlp_skipped(up)
    if skipped:
        return _row(note=f"mlp skipped: {skipped}")
    betas: dict[tuple[int, int], list[float]] = {}
    for r in up.get("regression_betas", []):
        if r["in_head_set"]:
            betas.setdefault((r["layer"], r["head"]), []).append(np.nan if r["beta"] is None else r["beta"])
    if not betas:
        return _row(note="no head-set head has a regression coefficient")
    heads = sorted(betas)
    cis = simultaneous_mean_ci([np.array(betas[h]) for h in heads], config.n_boot, config.seed)
    finite = [k for k, (m, _, _) in enumerate(cis) if np.isfinite(m)]
    if not finite:
        return _row(note="every head-set regression is singular: no coefficient")
    scaled = [k for k in finite if interval_verdict(cis[k][1], cis[k][2], 0.0, "nonzero") == HOLDS]
    k = max(scaled or finite, key=lambda j: abs(cis[j][0]))  # the reported head: a scaled one when there is one
    mean, lo, hi = cis[k]

    def label(j: int) -> str:  # the mlp stage's labels, of the median beta (METHOD.md §5)
        med = float(np.nanmedian(np.array(betas[heads[j]], dtype=float)))
        return "erased" if med <= -0.5 else "attenuated" if med < 0 else "amplified" if med > 0 else "unchanged"

    names = [f"L{heads[j][0]}.H{heads[j][1]} ({label(j)})" for j in scaled]
    n = int(np.isfinite(np.array(betas[heads[k]], dtype=float)).sum())
    note = (f"reported: L{heads[k][0]}.H{heads[k][1]}; " +
            (f"scaled (interval excludes 0): {', '.join(names)}" if names else "no head's beta interval excludes 0"))
    return _row(mean, lo, hi, n, 0.0, HOLDS if scaled else INCONCLUSIVE, note)


def _task_push(up: dict, config) -> dict:
    skipped = _mlp_skipped(up)
    if skipped:
        return _row(note=f"mlp skipped: {skipped}")
    fa = up["function_application"][0]
    return _row(fa["push"], fa["push_lo"], fa["push_hi"], fa["push_n"], 0.0,
                interval_verdict(fa["push_lo"], fa["push_hi"], 0.0, "above"), f"best layer {fa['best_layer']}")


def _argument_swap(up: dict, config) -> dict:
    skipped = _mlp_skipped(up)
    if skipped:
        return _row(note=f"mlp skipped: {skipped}")
    rows = [r for r in up.get("argument_swap", []) if r["eligible"]]
    if not rows:
        return _row(note="no eligible prompt (answer top-1 before and the other subject's object not)")
    diff = np.array([float(r["success"]) - float(r["chance_success"]) for r in rows])
    f = mean_ci_fields("d", diff, config.n_boot, config.seed)
    success = np.mean([r["success"] for r in rows])
    chance = np.mean([r["chance_success"] for r in rows])
    return _row(f["d"], f["d_lo"], f["d_hi"], len(rows), 0.0, interval_verdict(f["d_lo"], f["d_hi"], 0.0, "above"),
                f"success {success:.3f} vs chance {chance:.3f} (random head sets of the same size)")


# -- step 4 ----------------------------------------------------------------------------------------------
def _final_layer_suppresses(up: dict, config) -> dict:
    s = _first(up.get("final_layer_summary", []))
    if s is None:
        return _row(note="the final_layer stage has no summary for this partition")
    return _row(s["delta_p"], s["delta_p_lo"], s["delta_p_hi"], s["n"], 0.0,
                interval_verdict(s["delta_p_lo"], s["delta_p_hi"], 0.0, "below"),
                f"suppressors: {', '.join(s['suppressors']) or 'none'}")


def _mitigation_raises_confidence(up: dict, config) -> dict:
    rows = [r for r in up.get("mitigation", []) if r["variant"] == "heads" and r["choice"] == "cost_bounded"]
    if not rows:
        return _row(note="no cost-bounded mitigation of the suppressing heads")
    m = rows[0]
    note = f"alpha {m['alpha']:g} on {', '.join(m['components']) or 'no component'}"
    if m.get("note"):
        note += f"; {m['note']}"
    if not m["components"]:  # no head suppresses on the calibration half: no suppression to undo
        return _row(n=m["n_held_out"], note=note)
    if m["alpha"] == 1.0:  # suppressing heads, but no scale within the cost bound: it raised nothing
        return _row(m["delta_p"], m["delta_p_lo"], m["delta_p_hi"], m["n_held_out"], 0.0, DOES_NOT, note)
    return _row(m["delta_p"], m["delta_p_lo"], m["delta_p_hi"], m["n_held_out"], 0.0,
                interval_verdict(m["delta_p_lo"], m["delta_p_hi"], 0.0, "above"), note)


CLAIMS: tuple[Claim, ...] = (
    Claim("argument_heads", 1, "Argument-passing heads exist",
          "path-patching effect% of the strongest head (simultaneous 95% interval over all heads)",
          "holds: the head set is non-empty (a head significantly lowers M and attends to the subject); "
          "inconclusive otherwise (no head is significant, or none that is passes the attention filter)",
          "heads", _argument_heads),
    Claim("heads_copy_subject", 1, "They copy the subject to the last token",
          "Pearson r of attention END->S and DLA onto the subject, strongest head-set head (95% interval)",
          "holds: r's interval lies above 0", "heads", _heads_copy_subject),
    Claim("mlp_linear", 2, "The next MLP's output is a linear combination of the heads'",
          "mean R² of the per-prompt regressions at head-set layers (95% interval)",
          "holds: the interval lies above the R² threshold; does not: below it", "mlp", _mlp_linear),
    Claim("mlp_scales_heads", 2, "The MLP erases or amplifies the heads' outputs",
          "mean β of the scaled head-set head with the largest |mean β| (else of any head-set head; simultaneous 95% "
          "interval over the set's heads)",
          "holds: some head-set head's β interval excludes 0 (that head is reported); inconclusive otherwise",
          "mlp", _mlp_scales_heads),
    Claim("task_push", 3, "A task-aware MLP component pushes the answer",
          "push of the task-aware component c at the best layer (95% interval)",
          "holds: the interval lies above 0; does not: below 0", "mlp", _task_push),
    Claim("argument_swap", 3, "Swapping the heads' argument swaps the answer",
          "swap success minus the success of random head sets of the same size, eligible prompts (95% interval)",
          "holds: the interval lies above 0; does not: below 0", "mlp", _argument_swap),
    Claim("final_layer_suppresses", 4, "The final layer suppresses the answer",
          "Δp(answer) across the last layer (95% interval)",
          "holds: the interval lies below 0; does not: above 0", "final_layer", _final_layer_suppresses),
    Claim("mitigation_raises_confidence", 4, "Undoing the suppression raises held-out confidence",
          "held-out Δp(answer) of the cost-bounded mitigation of the suppressing heads (95% interval)",
          "holds: the interval lies above 0; does not: below 0, or no scale of the suppressing heads is within the "
          "cost bound (α = 1); not tested: no head suppresses", "final_layer", _mitigation_raises_confidence),
)
