-- Each claim's statistic against model size: per relation and pooled over relations ('all'), models smallest first
-- METHOD.md §10-11. One row per (claim, relation or 'all', shot, model) of the current claims, with the model's
-- family, dtype and parameter count (the `models` view: the published count of a packaged model, else the count
-- read). A bfloat16 copy of a float32 model is not another size: the plot draws the float32 one, and a size
-- measured only in bfloat16 (a spec's [model_dtypes]) with a hollow marker.
-- Per relation: the partition's statistic, its interval and verdict. Pooled ('all'): the mean statistic over
-- the relations where the claim was tested (no interval: relations differ in difficulty, so the spread across
-- them, min_value..max_value, is shown instead), and how many of them hold. `plots` draws this query as
-- statistic against parameter count (the size axis).
WITH c AS (
    SELECT c.claim, c.step, c.statistic, c.relation, c.shot, c.model, m.family, m.dtype, m.params, c.value, c.lo,
           c.hi, c.verdict
    FROM claims c LEFT JOIN models m USING (model)  -- a model without a record (older runs) has params NULL: last
    WHERE c.verdict <> 'not tested'
)
SELECT claim, step, any_value(statistic) AS statistic,
       CASE WHEN grouping(relation) = 1 THEN 'all' ELSE relation END AS relation, shot, model, family, dtype, params,
       avg(value) AS value,
       CASE WHEN grouping(relation) = 1 THEN NULL ELSE any_value(lo) END AS lo,
       CASE WHEN grouping(relation) = 1 THEN NULL ELSE any_value(hi) END AS hi,
       min(value) AS min_value, max(value) AS max_value,
       CASE WHEN grouping(relation) = 1 THEN NULL ELSE any_value(verdict) END AS verdict,
       count(*) AS n_relations,
       count(*) FILTER (WHERE verdict = 'holds') AS n_holds
FROM c
GROUP BY GROUPING SETS ((claim, step, relation, shot, model, family, dtype, params),
                        (claim, step, shot, model, family, dtype, params))
ORDER BY step, claim, grouping(relation) DESC, relation, shot, params NULLS LAST, model
