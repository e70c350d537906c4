-- p(answer) by layer for one model over its current final-layer results: median and interquartile range
-- per shot and layer (all relations pooled), with how many relations and prompts each point pools.
SELECT shot, layer, median(p_answer), quantile_cont(p_answer, 0.25), quantile_cont(p_answer, 0.75),
       count(DISTINCT relation), count(*)
FROM lens WHERE model = $model GROUP BY shot, layer ORDER BY shot, layer
