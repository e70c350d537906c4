"""The stages of the pipeline, declared once each (docs/METHOD.md §8).

A stage is the unit of the house: its name (the same for its config, CLI command, tables and plot
folder), the version of its results, its config class (whose fields are its settings, defaults and CLI
options), the stages it builds on, its pure compute (``tasks``), its tables and encoder (``storage``),
and what the CLI prints. ``flows.runner`` does everything else for every stage alike: identity and
hashing, reuse, commit, selection, provenance, Prefect, progress and timing.

Bump a stage's ``version`` whenever a change alters its results (numbers, columns, rows): stored results
of the older version then stop matching and are recomputed. ``code`` lists the modules whose source
digest each result records (provenance; ``tests/test_stage_versions.py`` fails when it changes without
a version decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from factrecall.storage import capture_tables, claims_tables, final_layer_tables, heads_tables, mlp_tables
from factrecall.storage.schema import PLOTS_SCHEMA
from factrecall.tasks import capture_stage, claims_stage, final_layer_stage, heads_stage, mlp_stage

__all__ = ["STAGES", "Stage", "get_stage"]


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    config: type
    upstream: tuple[str, ...]
    compute: Callable
    schemas: dict[str, pa.Schema]
    encode: Callable
    help: str
    code: tuple[str, ...]
    line: Callable[[dict], str] = lambda summary: ""  # one CLI line per computed partition, from its summary
    hint: str = ""  # the follow-up query the CLI suggests ("{model}", "{relation}" filled in)
    coverage_fields: tuple[str, ...] = ()  # settings a larger result covers (see storage.catalog)
    extra_inputs: Callable | None = None  # config -> further hashed inputs (e.g. control data)
    model_plots: dict[str, Callable] = field(default_factory=dict)  # name -> (connection, model) -> PNG bytes
    needs_model: bool = True  # False: the compute reads upstream results only (``inp.lm`` is None)

    @property
    def command(self) -> str:
        """The CLI command: the name with "-" for "_"."""
        return self.name.replace("_", "-")

    @property
    def tables(self) -> dict[str, pa.Schema]:
        """Every table the stage writes (its own, and its figures in ``plots``)."""
        return {**self.schemas, "plots": PLOTS_SCHEMA}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _final_line(s: dict) -> str:
    gains = ", ".join(f"{v.split(' ')[0]} {g:+.3f}" for v, g in s["held_out_delta_p"].items()
                      if v.endswith("(cost_bounded)") or v.startswith("mlp_answer_oracle"))
    return (f"last layer {s['verdict']} (Δp {s['delta_p']:+.3f} [{_fmt(s['delta_p_lo'])}, {_fmt(s['delta_p_hi'])}]); "
            f"held-out Δp: {gains}")


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage(
        name="capture", version=1, config=capture_stage.CaptureConfig, upstream=(),
        compute=capture_stage.compute, schemas=capture_tables.SCHEMAS, encode=capture_tables.encode,
        help="Capture activations, ledgers and logits for every (model, relation, shot) into the store.",
        code=("factrecall.tasks.capture_stage", "factrecall.tasks.capture", "factrecall.tasks.ledger",
              "factrecall.tasks.metrics", "factrecall.tasks.prompts", "factrecall.tasks.tokenization",
              "factrecall.tasks.adapters", "factrecall.storage.capture_tables"),
        line=lambda s: f"{s['n_prompts']} prompts, ledger max error {s['ledger_max_error']:.2e}",
        hint="factrecall query --named accuracy_by_shot",
        coverage_fields=("max_prompts", "variants"),
        extra_inputs=capture_stage.extra_inputs,
    ),
    Stage(
        name="heads", version=5, config=heads_stage.HeadsConfig, upstream=("capture",),
        compute=heads_stage.compute, schemas=heads_tables.SCHEMAS, encode=heads_tables.encode,
        help="Step 1: argument-passing heads — head statistics, exact path patching, head sets and plots.",
        code=("factrecall.tasks.heads_stage", "factrecall.tasks.head_stats", "factrecall.tasks.path_patching",
              "factrecall.tasks.intervals", "factrecall.tasks.upstream_checks", "factrecall.tasks.prompts",
              "factrecall.storage.heads_tables"),
        line=lambda s: (f"skipped — {s['skipped_reason']}" if s.get("skipped_reason") else
                        s["no_heads_reason"] if s.get("no_heads_reason") else
                        f"head set {', '.join(s['head_set'])} (patching {s['seconds_patching']:.0f} s)"),
        hint="factrecall query --named argument_heads --param model={model} --param relation={relation}",
    ),
    Stage(
        name="mlp", version=5, config=mlp_stage.MlpConfig, upstream=("capture", "heads"),
        compute=mlp_stage.compute, schemas=mlp_tables.SCHEMAS, encode=mlp_tables.encode,
        help="Steps 2-3: the MLP as an activation over the heads (regressions) and the task-aware component.",
        code=("factrecall.tasks.mlp_stage", "factrecall.tasks.mlp_regression", "factrecall.tasks.end_edits",
              "factrecall.tasks.logit_lens", "factrecall.tasks.intervals", "factrecall.tasks.upstream_checks",
              "factrecall.tasks.capture", "factrecall.tasks.tokenization", "factrecall.tasks.prompts",
              "factrecall.storage.mlp_tables"),
        line=lambda s: (f"skipped — {s['skipped_reason']}" if s.get("skipped_reason") else
                        f"strongest push at layer {s['best_layer']} ({_fmt(s['push'])}), removing it Δp "
                        f"{_fmt(s['removal_delta_p'])}, argument swap {_fmt(s['swap_success'])}"),
        hint="factrecall query --named mlp_head_effects; factrecall query --named answer_layer",
        model_plots={"argument_swap_by_relation": mlp_stage.model_swap_plot},
    ),
    Stage(
        name="final_layer", version=2, config=final_layer_stage.FinalLayerConfig, upstream=("capture",),
        compute=final_layer_stage.compute, schemas=final_layer_tables.SCHEMAS, encode=final_layer_tables.encode,
        help="Step 4: does the last layer suppress the answer, which components do it, and what mitigating costs.",
        code=("factrecall.tasks.final_layer_stage", "factrecall.tasks.final_layer", "factrecall.tasks.control_text",
              "factrecall.tasks.logit_lens", "factrecall.storage.final_layer_tables"),
        line=_final_line,
        hint="factrecall query --named final_layer_suppression; factrecall query --named mitigation_gain",
        extra_inputs=final_layer_stage.extra_inputs,
        model_plots={"lens_by_layer": final_layer_stage.model_lens_plot},
    ),
    Stage(
        name="claims", version=5, config=claims_stage.ClaimsConfig, upstream=("heads", "mlp", "final_layer"),
        compute=claims_stage.compute, schemas=claims_tables.SCHEMAS, encode=claims_tables.encode,
        help="The paper's claims judged on the partition's heads, mlp and final-layer results (runs them if needed).",
        code=("factrecall.tasks.claims_stage", "factrecall.tasks.claims", "factrecall.tasks.intervals",
              "factrecall.storage.claims_tables"),
        line=lambda s: ", ".join(f"{c} {v}" for c, v in s["verdicts"].items()),
        hint="factrecall query --named claim_matrix",
        needs_model=False,
    ),
)}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None


def producers() -> dict[str, str]:
    """table -> the command that fills it (for "table X is empty: run ... first")."""
    out = {}
    for stage in STAGES.values():
        for table in stage.schemas:
            out.setdefault(table, f"factrecall {stage.command}")
    return out
