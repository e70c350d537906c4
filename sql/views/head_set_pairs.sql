-- head_set_pairs: Jaccard overlap of the argument-passing head sets between every pair of (relation,
-- shot) of the same model (METHOD.md §4). Pairs are ordered: (relation_a, shot_a) < (relation_b, shot_b).
-- jaccard = |A and B| / |A or B|, 1.0 for two empty sets (as tasks/head_stats.jaccard). Partitions whose
-- analysis was skipped (skipped_reason not null) have no head set and are left out. Derived from head_sets.
CREATE OR REPLACE VIEW head_set_pairs AS
WITH s AS (
    SELECT model, relation, shot, list_distinct(heads) AS heads
    FROM head_sets
    WHERE skipped_reason IS NULL
),
pairs AS (
    SELECT a.model,
           a.relation AS relation_a, a.shot AS shot_a, b.relation AS relation_b, b.shot AS shot_b,
           len(a.heads) AS n_a, len(b.heads) AS n_b,
           len(list_distinct(list_intersect(a.heads, b.heads))) AS n_intersection
    FROM s AS a
    JOIN s AS b
      ON a.model = b.model
     AND (a.relation < b.relation OR (a.relation = b.relation AND a.shot < b.shot))
)
SELECT model, relation_a, shot_a, relation_b, shot_b, n_a, n_b, n_intersection,
       n_a + n_b - n_intersection AS n_union,
       CASE WHEN n_a + n_b - n_intersection = 0 THEN 1.0
            ELSE n_intersection / (n_a + n_b - n_intersection) END::DOUBLE AS jaccard
FROM pairs;
