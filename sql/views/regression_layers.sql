-- regression_layers: per analysed layer: median R^2 (design A) and pooled R^2 (design B), the push
-- of c toward the answer with its interval, the answer's rank in c's lens, the subject's rank
-- before/after the MLP; best_layer marks the strongest push (METHOD.md §5-6). Written by the "mlp"
-- stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW regression_layers AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/regression_layers/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'regression_layers');
