-- regression_prompts: per clean prompt and analysed layer: design A's intercept, R^2, rank and
-- singular flag, the subject's logit-lens rank before/after the MLP, DLA onto the subject of sum o
-- and of sum (1+beta) o, and the task-aware component c's answer rank, DLA, push and cosine
-- (METHOD.md §5-6). Written by the "mlp" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW regression_prompts AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/regression_prompts/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'regression_prompts');
