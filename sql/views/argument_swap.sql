-- argument_swap: per clean prompt: the head set's outputs at END patched from the prompt about
-- another subject X'; top-1 before/after, whether it became X''s object (success) or stayed
-- (METHOD.md §6). Written by the "mlp" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW argument_swap AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/argument_swap/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'argument_swap');
