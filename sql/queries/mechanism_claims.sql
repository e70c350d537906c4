-- Do the paper's step 2-3 claims hold per model and domain (domain 'all': every domain): share of head-layer MLPs with design B R^2 >= 0.5, share of argument-passing heads amplified, erased or reversed, argument-swap success, push and removal of c
-- METHOD.md §5-6. Pooled over the model's analysed partitions (skipped ones have no rows):
-- head-layer MLPs = (partition, layer) pairs whose layer holds a head-set head, with design B's R^2 (prompts answered
-- correctly) and its shuffled-prompt null; argument-passing heads = (partition, head) pairs of the head sets,
-- labelled by their design B beta; swap success (and the chance rate of random head sets) over every eligible prompt
-- (X's object the greedy answer before, no subject copy; 95% interval: normal approximation, mean ± 1.96 standard
-- errors); swap_stayed over prompts whose answer was top-1 before; n_push_positive counts partitions whose held-out
-- null-adjusted push interval at the best layer lies above 0.
WITH layers AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) AS n_head_layer_mlps,
           avg((pooled_r2 >= 0.5)::INTEGER) AS share_head_layer_mlps_r2_ge_half,
           median(pooled_r2) AS median_r2_head_layers,
           median(pooled_r2_null_q95) AS median_r2_null_q95
    FROM regression_layers WHERE holds_head_set_head GROUP BY GROUPING SETS ((model, domain), (model))
),
heads AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) AS n_argument_heads,
           avg((pooled_label = 'amplified')::INTEGER) AS share_amplified,
           avg((pooled_label = 'erased')::INTEGER) AS share_erased,
           avg((pooled_label = 'reversed')::INTEGER) AS share_reversed,
           avg((pooled_label = 'attenuated')::INTEGER) AS share_attenuated
    FROM regression_heads WHERE in_head_set GROUP BY GROUPING SETS ((model, domain), (model))
),
swap AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) FILTER (WHERE eligible) AS n_swap,
           avg(success::INTEGER) FILTER (WHERE eligible) AS swap_success,
           1.96 * sqrt(avg(success::INTEGER) FILTER (WHERE eligible)
                       * (1 - avg(success::INTEGER) FILTER (WHERE eligible)) / count(*) FILTER (WHERE eligible))
               AS swap_success_pm,
           avg(chance_success::INTEGER) FILTER (WHERE eligible) AS swap_chance,
           avg(stayed::INTEGER) FILTER (WHERE answer_was_top1) AS swap_stayed
    FROM argument_swap GROUP BY GROUPING SETS ((model, domain), (model))
),
parts AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) AS n_partitions, avg(push) AS mean_push,
           count(*) FILTER (WHERE push_lo > 0) AS n_push_positive,
           avg(removal_delta_p) AS mean_removal_delta_p
    FROM function_application WHERE skipped_reason IS NULL GROUP BY GROUPING SETS ((model, domain), (model))
)
SELECT p.model, p.domain, p.n_partitions, l.n_head_layer_mlps, l.share_head_layer_mlps_r2_ge_half, l.median_r2_head_layers,
       l.median_r2_null_q95, h.n_argument_heads, h.share_amplified, h.share_erased, h.share_reversed, h.share_attenuated,
       s.n_swap, s.swap_success, s.swap_success_pm, s.swap_chance, s.swap_stayed,
       p.mean_push, p.n_push_positive, p.mean_removal_delta_p
FROM parts AS p
LEFT JOIN layers AS l USING (model, domain)
LEFT JOIN heads AS h USING (model, domain)
LEFT JOIN swap AS s USING (model, domain)
ORDER BY p.model, p.domain = 'all', p.domain
