-- regression_heads: per analysed layer and head: the distribution of design A's beta over prompts
-- (mean with bootstrap 95% interval, quartiles, label shares, label of the median) and design B's
-- pooled beta (METHOD.md §5). Written by the "mlp" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW regression_heads AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/regression_heads/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'regression_heads');
