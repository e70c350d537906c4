"""The claims stage: the paper's claims judged on one partition's upstream results (docs/METHOD.md §10).

It reads the heads, mlp and final_layer results the runner chose (each pinned by result id in the row)
and loads no model. One row per claim of ``tasks.claims.CLAIMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .claims import CLAIMS, HOLDS, VERDICTS
from .final_layer_stage import FinalLayerConfig
from .mlp_stage import MlpConfig
from .stage_api import Rows, StageInput, StageOutput, option

__all__ = ["ClaimsConfig", "UPSTREAM_TABLES", "compute"]

#: The upstream tables the claims read, by stage (all columns of one partition's result: they are small).
UPSTREAM_TABLES = {
    "heads": ("head_sets", "head_summary"),
    "mlp": ("function_application", "regression_layers", "regression_prompts", "regression_betas", "argument_swap"),
    "final_layer": ("final_layer_summary", "mitigation"),
}

_HEAD_SUMMARY_COLUMNS = ["layer", "head", "n", "effect_pct", "effect_simul_lo", "effect_simul_hi", "set_order",
                         "pearson_r", "r_lo", "r_hi", "mean_attn_to_s"]


@dataclass(frozen=True)
class ClaimsConfig(MlpConfig, FinalLayerConfig):
    """The settings of every stage the claims build on, and the claims' own thresholds."""

    r2_threshold: float = option(0.5, "Least mean R² for 'the MLP's output is a linear combination of the heads'.",
                                 min=0.0, max=1.0)


def _rows(reader, table: str) -> list[dict]:
    if not reader.tables.get(table):
        return []  # e.g. a skipped analysis writes only its summary row
    columns = _HEAD_SUMMARY_COLUMNS if table == "head_summary" else None
    return reader.read(table, columns).to_pylist()


def compute(inp: StageInput) -> Iterator[Rows]:
    """Yields one ``claims`` part of len(CLAIMS) rows; the summary counts verdicts."""
    up = {table: _rows(inp.upstream[stage], table) for stage, tables in UPSTREAM_TABLES.items() for table in tables}
    rows = []
    for claim in CLAIMS:
        fields = claim.judge(up, inp.config)
        rows.append({"claim": claim.name, "step": claim.step, "statistic": claim.statistic, **fields,
                     "rule": claim.rule, "source_stage": claim.source,
                     "source_result_id": inp.upstream[claim.source].result_id})
    yield Rows({"claims": rows})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return StageOutput({"verdicts": {r["claim"]: r["verdict"] for r in rows}, "counts": counts,
                        "n_hold": counts[HOLDS]})
