-- head_summary: per head over a partition's clean prompts (METHOD.md §4): means, Pearson r of attention
-- END->S vs DLA onto the subject, path-patching effect% (negative = patching the head lowers M) with
-- bootstrap 95% intervals, effect under relation-word corruption, head-set membership and order.
-- Written by the "heads" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW head_summary AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/head_summary/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'head_summary');
