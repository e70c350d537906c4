-- head_prompts: per clean prompt x head at END (METHOD.md §4): attention END->S, DLA onto the subject's
-- first token and onto the answer, the subject's logit-lens rank, M clean, path-patching effect% under
-- subject and relation-word corruption. Written by the "heads" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW head_prompts AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/head_prompts/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'head_prompts');
