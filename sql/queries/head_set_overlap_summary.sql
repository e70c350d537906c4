-- How much the head sets are shared: mean, min and max Jaccard per model across shots of one relation, across relations at one shot, and across both
-- From the head_set_pairs view. A high "same relation, other shot" overlap with a low "other relation,
-- same shot" overlap means the heads are stable for a task and specific to it.
SELECT model,
       CASE WHEN relation_a = relation_b THEN 'same relation, other shot'
            WHEN shot_a = shot_b THEN 'other relation, same shot'
            ELSE 'other relation, other shot' END AS comparison,
       count(*) AS n_pairs,
       avg(jaccard) AS mean_jaccard,
       min(jaccard) AS min_jaccard,
       max(jaccard) AS max_jaccard
FROM head_set_pairs
GROUP BY ALL
ORDER BY model, comparison
