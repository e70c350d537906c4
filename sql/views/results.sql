-- results: one row per committed result of any stage (the catalogue): its identity (input_hash; family,
-- n_prompts and variants: what it can stand in for), settings (seed, max_prompts, dtype, config JSON),
-- provenance (model_sha256, relation_hash, stage_version, code_digest, upstream results, run_id) and
-- status: current (selected, intact, upstream met), stale, damaged or unselected (status_reason says why).
CREATE VIEW results AS SELECT * FROM _results;
