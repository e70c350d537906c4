"""Which stored result each (model, relation, shot, stage) shows, and whether it is still current
(docs/METHOD.md §8).

A *result* is one stage's output for one partition key (model, relation, shot), committed once and never
changed. Its identity:

- ``input_hash``: the hash of everything that decides its numbers (model file, dtype, dataset, settings,
  stage version, extra inputs such as the control relations). A rerun with the same inputs reuses it.
- ``family``, ``n_prompts``, ``variants``: what it can stand in for. A capture's family leaves out
  ``max_prompts`` and ``variants``, so a capture of all 225 prompts with every variant serves a stage
  that needs the first 60 clean ones (prompts are built per index, so prompt i is the same in both).
  Every other stage's family is its input hash.
- ``upstream``: the requirement it was computed under for each upstream stage and the exact result
  that met it.

The *selection* is an append-only log: each command that computes or reuses a result for a key selects
it, together with the upstream results it used (one transaction per partition). The selected result of
(key, stage) is the default one the SQL views show. It is *current* when it is intact and each upstream
result it was computed from is exactly the selected (and itself current) result of that stage; otherwise
it is *stale*, listed in the ``stale`` view and recomputed by the next run of its stage. So the default
views never join a stage's rows with another capture's, even a content-equivalent one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

__all__ = ["Key", "Requirement", "ResultRecord", "Catalog", "RESULTS_SCHEMA", "SELECTIONS_SCHEMA"]

Key = tuple[str, str, int]  # (model, relation, shot)

_REQUIREMENT = pa.struct([("stage", pa.string()), ("result_id", pa.string()), ("family", pa.string()),
                          ("n_prompts", pa.int32()), ("variants", pa.list_(pa.string()))])

#: One row per committed result (the commit point: data rows of a result_id without this row are invisible).
RESULTS_SCHEMA = pa.schema([
    ("result_id", pa.string()), ("stage", pa.string()), ("model", pa.string()), ("relation", pa.string()),
    ("shot", pa.int32()), ("input_hash", pa.string()), ("family", pa.string()), ("n_prompts", pa.int32()),
    ("variants", pa.list_(pa.string())), ("upstream", pa.list_(_REQUIREMENT)),
    ("stage_version", pa.int32()), ("code_digest", pa.string()), ("config", pa.string()),
    ("seed", pa.int64()), ("max_prompts", pa.int64()), ("dtype", pa.string()), ("model_sha256", pa.string()),
    ("relation_hash", pa.string()),
    ("tables", pa.list_(pa.struct([("name", pa.string()), ("rows", pa.int64())]))),
    ("summary", pa.string()), ("run_id", pa.string()), ("committed_at", pa.timestamp("us", tz="UTC")),
    ("seconds", pa.float64()),
])

#: Append-only: each command that computes or reuses a result for a key selects it.
SELECTIONS_SCHEMA = pa.schema([
    ("model", pa.string()), ("relation", pa.string()), ("shot", pa.int32()), ("stage", pa.string()),
    ("result_id", pa.string()), ("run_id", pa.string()), ("selected_at", pa.timestamp("us", tz="UTC")),
])


@dataclass(frozen=True)
class Requirement:
    """What a stage needs of an upstream stage's result."""

    stage: str
    family: str
    n_prompts: int
    variants: tuple[str, ...] = ("clean",)

    def met_by(self, rec: "ResultRecord") -> bool:
        return (rec.stage == self.stage and rec.family == self.family and rec.n_prompts >= self.n_prompts
                and set(self.variants) <= set(rec.variants))


@dataclass
class ResultRecord:
    result_id: str
    stage: str
    model: str
    relation: str
    shot: int
    input_hash: str
    family: str
    n_prompts: int
    variants: tuple[str, ...]
    upstream: tuple[tuple[Requirement, str], ...]  # (requirement, result_id that met it)
    stage_version: int
    code_digest: str
    config: dict
    seed: int | None
    max_prompts: int | None
    dtype: str
    model_sha256: str | None
    relation_hash: str
    tables: dict[str, int]
    summary: dict
    run_id: str
    committed_at: datetime
    seconds: float

    @property
    def key(self) -> Key:
        return (self.model, self.relation, self.shot)

    def to_row(self) -> dict:
        row = {name: getattr(self, name) for name in RESULTS_SCHEMA.names}
        row["variants"] = list(self.variants)
        row["upstream"] = [{"stage": r.stage, "result_id": rid, "family": r.family, "n_prompts": r.n_prompts,
                            "variants": list(r.variants)} for r, rid in self.upstream]
        row["config"] = json.dumps(self.config, sort_keys=True, default=str)
        row["summary"] = json.dumps(self.summary, sort_keys=True, default=str)
        row["tables"] = [{"name": k, "rows": v} for k, v in sorted(self.tables.items())]
        return row

    @classmethod
    def from_row(cls, row: dict) -> "ResultRecord":
        up = tuple((Requirement(u["stage"], u["family"], u["n_prompts"], tuple(u["variants"] or ())), u["result_id"])
                   for u in row["upstream"] or ())
        return cls(**{**row, "variants": tuple(row["variants"] or ()), "upstream": up,
                      "config": json.loads(row["config"] or "{}"), "summary": json.loads(row["summary"] or "{}"),
                      "tables": {t["name"]: t["rows"] for t in row["tables"] or ()}})


@dataclass
class Catalog:
    """Results, the selection log and the damaged results of a store version (see module docstring)."""

    results: dict[str, ResultRecord] = field(default_factory=dict)
    selection: dict[tuple[Key, str], str] = field(default_factory=dict)  # (key, stage) -> result_id
    damaged: dict[str, str] = field(default_factory=dict)  # result_id -> what is wrong

    @classmethod
    def from_tables(cls, results: pa.Table | None, selections: pa.Table | None,
                    damaged: dict[str, str] | None = None) -> "Catalog":
        cat = cls(damaged=dict(damaged or {}))
        for row in (results.to_pylist() if results is not None else []):
            rec = ResultRecord.from_row(row)
            cat.results[rec.result_id] = rec
        if selections is not None:
            rows = sorted(selections.to_pylist(), key=lambda r: (r["selected_at"], r["result_id"]))
            for r in rows:
                if r["result_id"] in cat.results:  # a selection of an unknown result is ignored
                    cat.selection[((r["model"], r["relation"], r["shot"]), r["stage"])] = r["result_id"]
        return cat

    # -- queries -----------------------------------------------------------------------------------
    def selected(self, key: Key, stage: str) -> ResultRecord | None:
        rid = self.selection.get((key, stage))
        return self.results.get(rid) if rid else None

    def intact(self, rec: ResultRecord) -> bool:
        return rec.result_id not in self.damaged

    def upstream_problem(self, rec: ResultRecord, _depth: int = 0) -> str | None:
        """Why ``rec``'s upstream requirements are not met by the current selection (None if they are)."""
        for req, used in rec.upstream:
            sel = self.selected(rec.key, req.stage)
            if sel is None:
                return f"no {req.stage} result is selected for this partition"
            if sel.result_id != used:
                was = self.results.get(used)
                return (f"it was computed on {req.stage} result {used}"
                        + (f" ({describe(was)})" if was else "")
                        + f", but the selected {req.stage} result is {sel.result_id} ({describe(sel)})")
            if not self.intact(sel):
                return f"its {req.stage} result {sel.result_id} is damaged: {self.damaged[sel.result_id]}"
            if _depth < 8 and (why := self.upstream_problem(sel, _depth + 1)):
                return f"its {req.stage} result is stale: {why}"
        return None

    def status(self, rec: ResultRecord) -> tuple[str, str | None]:
        """("current" | "stale" | "damaged" | "unselected", reason)."""
        if not self.intact(rec):
            return "damaged", self.damaged[rec.result_id]
        if self.selection.get((rec.key, rec.stage)) != rec.result_id:
            return "unselected", None
        why = self.upstream_problem(rec)
        return ("stale", why) if why else ("current", None)

    def current(self) -> list[ResultRecord]:
        return [r for r in self.results.values() if self.status(r)[0] == "current"]

    def candidates(self, key: Key, req: Requirement) -> list[ResultRecord]:
        """Intact results of ``key`` that meet ``req`` and whose own upstream is met by the selection,
        best first: the selected one, then exact family and size, then the largest, then the newest."""
        sel = self.selected(key, req.stage)
        found = [r for r in self.results.values()
                 if r.key == key and req.met_by(r) and self.intact(r) and self.upstream_problem(r) is None]
        return sorted(found, key=lambda r: (sel is None or r.result_id != sel.result_id,
                                            r.n_prompts != req.n_prompts, -r.n_prompts, -r.committed_at.timestamp()))

    # -- updates (mirror what was just written to the store) ------------------------------------
    def add(self, rec: ResultRecord) -> None:
        self.results[rec.result_id] = rec

    def select(self, rec: ResultRecord) -> str | None:
        """Select ``rec`` for its key and stage; returns the result id it replaced (None if none or same)."""
        before = self.selection.get((rec.key, rec.stage))
        self.selection[(rec.key, rec.stage)] = rec.result_id
        return before if before != rec.result_id else None


def describe(rec: ResultRecord) -> str:
    """The settings that tell results of one key apart, e.g. "seed 0, max_prompts 60, float32"."""
    parts = [f"seed {rec.seed}" if rec.seed is not None else None,
             f"max_prompts {rec.max_prompts if rec.max_prompts is not None else 'all'}",
             f"{rec.n_prompts} prompts"]
    if tuple(rec.variants) != ("clean",):
        parts.append("variants " + "+".join(rec.variants))
    parts.append(f"v{rec.stage_version}")
    return ", ".join(p for p in parts if p)
