-- mitigation_prompts: per prompt and variant at the chosen alpha: p, log p and correctness before
-- and after (METHOD.md §7). Written by the "final_layer" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW mitigation_prompts AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/mitigation_prompts/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'mitigation_prompts');
