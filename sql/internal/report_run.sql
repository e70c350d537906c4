-- A run's manifest row (provenance of the report).
SELECT run_id, kind, started_at, code_version, python, seed, packages, config, model_sha256, relation_sha256,
       versions FROM runs WHERE run_id = $run_id;
