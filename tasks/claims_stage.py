"""The claims stage: the paper's claims judged on one partition's upstream results (docs/METHOD.md §10).

It reads the heads, mlp and final_layer results the runner chose (each pinned by result id in the row)
and loads no model. One row per claim of ``tasks.claims.CLAIMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .claims import HOLDS, VERDICTS, judge_all
from .final_layer_stage import FinalLayerConfig
from .mlp_stage import MlpConfig
from .stage_api import Rows, StageInput, StageOutput, option

__all__ = ["ClaimsConfig", "UPSTREAM_TABLES", "compute"]

#: The upstream tables the claims read, by stage (all columns of one partition's result: they are small).
UPSTREAM_TABLES = {
    "heads": ("head_sets", "head_summary"),
    "mlp": ("function_application", "regression_layers", "regression_heads", "argument_swap"),
    "final_layer": ("final_layer_summary", "mitigation", "mitigation_prompts", "lens"),
}

_COLUMNS = {
    "head_summary": ["layer", "head", "n", "effect_pct", "effect_simul_lo", "effect_simul_hi", "effect_all_pct",
                     "effect_all_lo", "effect_all_hi", "set_order", "attention_passes", "pearson_r", "r_lo", "r_hi",
                     "mean_attn_to_s", "subject_top_share", "copy_auc", "copy_auc_lo", "copy_auc_hi", "copy_n",
                     "copy_auc_all"],
    "lens": ["prompt_id", "layer", "p_answer", "rank_answer"],
}


@dataclass(frozen=True)
class ClaimsConfig(MlpConfig, FinalLayerConfig):
    """The settings of every stage the claims build on, and the claims' own thresholds."""

    r2_threshold: float = option(0.5, "Least design B R² for 'the MLP's output is a linear combination of the heads'.",
                                 min=0.0, max=1.0)
    copy_threshold: float = option(0.75, "Least copy AUC (own subject vs the relation's other subjects in the head's "
                                         "logit lens; 0.5 = no preference) for 'the heads copy the subject'.",
                                   min=0.5, max=1.0)
    beta_bound: float = option(0.5, "Least |β| (design B) of a head-set head for 'the MLP erases or amplifies the "
                                    "heads'.", min=0.0, max=10.0)
    push_bound: float = option(0.5, "Least null-adjusted push (logits) of the task-aware component for 'it pushes "
                                    "the answer'.", min=0.0, max=100.0)
    swap_threshold: float = option(0.5, "Least argument-swap success rate for 'swapping the argument swaps the "
                                        "answer'.", min=0.0, max=1.0)
    suppression_bound: float = option(0.02, "Least drop of p(answer) across the last layer for 'it suppresses the "
                                            "answer'.", min=0.0, max=1.0)
    gain_bound: float = option(0.01, "Least held-out rise of p(answer) for 'undoing the suppression raises "
                                     "confidence'.", min=0.0, max=1.0)


def _rows(reader, table: str) -> list[dict]:
    if not reader.tables.get(table):
        return []  # e.g. a skipped analysis writes only its summary row
    return reader.read(table, _COLUMNS.get(table)).to_pylist()


def compute(inp: StageInput) -> Iterator[Rows]:
    """Yields one ``claims`` part of len(CLAIMS) rows; the summary counts verdicts."""
    up = {table: _rows(inp.upstream[stage], table) for stage, tables in UPSTREAM_TABLES.items() for table in tables}
    rows = []
    for claim, fields in judge_all(up, inp.config):
        rows.append({"claim": claim.name, "step": claim.step, "statistic": claim.statistic, **fields,
                     "rule": claim.rule, "source_stage": claim.source,
                     "source_result_id": inp.upstream[claim.source].result_id})
    yield Rows({"claims": rows})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return StageOutput({"verdicts": {r["claim"]: r["verdict"] for r in rows}, "counts": counts,
                        "n_hold": counts[HOLDS]})
