-- function_application: one row per partition: the head set, the analysed layers, the layer of the
-- strongest push and where the answer appears in c's lens, removing c (drop in p(answer)) and the
-- argument-swap success rate with intervals, and the shares the paper's claims are judged by
-- (METHOD.md §5-6). Written by the "mlp" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW function_application AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/function_application/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'function_application');
