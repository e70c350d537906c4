-- lens: logit lens at END per clean prompt and depth (layer -1 = embeddings; the last layer equals
-- the model's logits): p, logit, log p and rank of the answer and of the competitor, entropy
-- (METHOD.md §7). Written by the "final_layer" stage.
-- Only committed partitions are visible (semi-join on the commits view); model, relation, shot come
-- from the Hive path. {root} is replaced by the store root.
CREATE OR REPLACE VIEW lens AS
SELECT model, relation, shot, * EXCLUDE (model, relation, shot)
FROM read_parquet('{root}/lens/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true,
                  hive_types = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER'}) AS t
SEMI JOIN commits AS c
    ON t.model = c.model AND t.relation = c.relation AND t.shot = c.shot
   AND list_contains(c.tables, 'lens');
