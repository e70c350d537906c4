"""The store's record tables: rows about runs rather than results (docs/METHOD.md §8).

Each is an unpartitioned Delta table appended one transaction per run and read whole (they are small):

- ``runs``: one manifest per command run (see ``Store.write_run``);
- ``relations``: each relation a run used, with its source, domain, counts and content hash;
- ``models``: each model a run used, with its family, sizes and parameter count (the size axis);
- ``reproductions``: one row per `factrecall reproduce`: the spec, what it was compared with, the verdict;
- ``reproduction_claims``: the claims a reproduction found, one row per (run, model, relation, shot, claim);
- ``drift``: each statistic of a reproduction against the one before it (or the pinned baseline).

Every row names its ``run_id``, so a view as of a run shows the records up to that run.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["RECORDS", "DRIFT_SCHEMA", "MODELS_SCHEMA", "RELATIONS_SCHEMA", "REPRODUCTION_CLAIMS_SCHEMA", "REPRODUCTIONS_SCHEMA",
           "RUNS_SCHEMA"]

_TS = pa.timestamp("us", tz="UTC")

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("kind", pa.string()), ("started_at", _TS),
    ("finished_at", _TS), ("code_version", pa.string()), ("python", pa.string()),
    ("seed", pa.int64()), ("packages", pa.string()), ("config", pa.string()), ("model_sha256", pa.string()),
    ("relation_sha256", pa.string()), ("relation_repairs", pa.string()), ("partitions", pa.string()),
    ("refused", pa.string()),
    ("timings", pa.string()), ("versions", pa.string()), ("store", pa.string()),
])

RELATIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("relation", pa.string()), ("source", pa.string()), ("domain", pa.string()),
    ("n_facts", pa.int32()), ("n_subjects", pa.int32()), ("n_templates", pa.int32()), ("n_prompts", pa.int32()),
    ("content_hash", pa.string()), ("source_file", pa.string()), ("recorded_at", _TS),
])

MODELS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("model", pa.string()), ("ref", pa.string()), ("family", pa.string()),
    ("n_params", pa.int64()),  # parameters of the model as read (a tied unembedding once; null when unknown)
    ("n_params_nominal", pa.int64()),  # a packaged model's published count (tied embeddings once), else null
    ("n_layers", pa.int32()), ("n_heads", pa.int32()), ("n_kv_heads", pa.int32()), ("d_model", pa.int32()),
    ("vocab_size", pa.int32()), ("dtype", pa.string()), ("file_sha256", pa.string()), ("recorded_at", _TS),
])

REPRODUCTIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spec", pa.string()), ("spec_version", pa.int32()), ("spec_sha256", pa.string()),
    ("spec_text", pa.string()), ("started_at", _TS), ("finished_at", _TS),
    ("compared_with", pa.string()),  # the earlier reproduction's run id, "baseline:<file>", or null (first)
    ("n_claims", pa.int32()), ("n_holds", pa.int32()), ("n_does_not", pa.int32()), ("n_inconclusive", pa.int32()),
    ("n_not_tested", pa.int32()), ("n_drifted", pa.int32()), ("n_refused", pa.int32()),
    ("verdict", pa.string()),  # "no drift" | "drift" | "first" (nothing to compare with) | "refused"
    ("summary", pa.string()),  # the one-line verdict the command printed
])

REPRODUCTION_CLAIMS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spec", pa.string()), ("model", pa.string()), ("relation", pa.string()),
    ("domain", pa.string()), ("shot", pa.int32()), ("claim", pa.string()), ("step", pa.int8()),
    ("value", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64()), ("n", pa.int32()),
    ("threshold", pa.float64()), ("verdict", pa.string()), ("note", pa.string()),
    ("result_id", pa.string()),  # the claims result the row comes from
    ("source_result_id", pa.string()),  # the heads, mlp or final_layer result holding the statistic
])

DRIFT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("spec", pa.string()), ("compared_with", pa.string()), ("model", pa.string()),
    ("relation", pa.string()), ("shot", pa.int32()), ("claim", pa.string()),
    ("before", pa.float64()), ("now", pa.float64()), ("difference", pa.float64()), ("tolerance", pa.float64()),
    ("before_verdict", pa.string()), ("now_verdict", pa.string()), ("drifted", pa.bool_()),
    ("reason", pa.string()),  # why it drifted (null when it did not)
])

#: table -> schema of every record table.
RECORDS: dict[str, pa.Schema] = {
    "runs": RUNS_SCHEMA, "relations": RELATIONS_SCHEMA, "models": MODELS_SCHEMA, "reproductions": REPRODUCTIONS_SCHEMA,
    "reproduction_claims": REPRODUCTION_CLAIMS_SCHEMA, "drift": DRIFT_SCHEMA,
}
