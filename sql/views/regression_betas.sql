-- regression_betas: design A's beta per clean prompt, analysed layer and head at END (m = sum beta
-- o + b + e, float64 least squares over d_model), its label (erased <= -0.5 < attenuated < 0 <
-- amplified) and whether the head is in the head set (METHOD.md §5). Written by the "mlp" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW regression_betas AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/regression_betas/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'regression_betas');
