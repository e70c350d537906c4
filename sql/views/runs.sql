-- runs: one row per run manifest (code version, packages and config as JSON strings, seed, times).
-- Per-run table: <root>/runs/run_id=<id>/part-0.parquet (the file holds the run_id column).
CREATE OR REPLACE VIEW runs AS
SELECT *
FROM read_parquet('{root}/runs/*/*.parquet', hive_partitioning = false, union_by_name = true);
