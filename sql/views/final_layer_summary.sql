-- final_layer_summary: one row per partition: the change of p(answer), logit(answer), the
-- competitor and entropy across the last layer with bootstrap 95% intervals, the share of prompts
-- where p drops, the suppressors and the verdict on the paper's claim (METHOD.md §7). Written by
-- the "final_layer" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW final_layer_summary AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/final_layer_summary/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'final_layer_summary');
