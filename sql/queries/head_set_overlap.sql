-- Jaccard overlap of the argument-passing head sets between every pair of (relation, shot) of the same model
-- The pairs come from the head_set_pairs view (ordered pairs, 1.0 for two empty sets, skipped
-- partitions left out).
SELECT model, relation_a, shot_a, relation_b, shot_b, n_a, n_b, n_intersection, n_union, jaccard
FROM head_set_pairs
ORDER BY model, relation_a, shot_a, relation_b, shot_b
