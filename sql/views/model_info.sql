-- model_info: one row per model: sizes, final norm (kind, effective gain, bias), vocabulary, source.
-- Per-model table: <root>/model_info/model=<m>/part-0.parquet (the file holds the model column).
CREATE OR REPLACE VIEW model_info AS
SELECT *
FROM read_parquet('{root}/model_info/*/*.parquet', hive_partitioning = false, union_by_name = true);
