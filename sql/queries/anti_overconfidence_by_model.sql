-- Per model and domain (domain 'all': every domain): does the last layer suppress the answer (partitions with each verdict, and Δp pooled over all prompts), and how much each mitigation raises held-out p(answer) (pooled over all held-out prompts)
-- METHOD.md §7. delta_p = p(answer) at the last layer minus the lens entering it. Pooled means weigh
-- every prompt the same; their 95% intervals are normal approximations (mean ± 1.96 standard errors
-- over prompts; each partition's own bootstrap intervals are in final_layer_summary and mitigation).
-- gain_* = held-out p_after - p_before at each partition's chosen alpha: the cost-bounded choice for the
-- deployable variants (heads, mlp_top1), the unconstrained one for the oracle (mlp_answer_oracle, which
-- needs the label). text_delta_logp_*: mean over partitions of the held-out plain-text cost (mean change of
-- log p per next token) of the cost-bounded choice.
WITH d AS (
    SELECT a.model, a.domain, a.p_answer - b.p_answer AS dp
    FROM lens AS a
    JOIN lens AS b USING (model, relation, shot, prompt_id)
    JOIN final_layer_summary AS s USING (model, relation, shot)
    WHERE a.layer = s.layer AND b.layer = s.layer - 1
),
pooled AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) AS n_prompts, avg(dp) AS delta_p,
           avg(dp) - 1.96 * stddev_samp(dp) / sqrt(count(*)) AS delta_p_lo,
           avg(dp) + 1.96 * stddev_samp(dp) / sqrt(count(*)) AS delta_p_hi,
           avg((dp < 0)::INTEGER) AS share_dropped
    FROM d GROUP BY GROUPING SETS ((model, domain), (model))
),
verdicts AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           count(*) AS n_partitions,
           count(*) FILTER (WHERE verdict = 'suppresses') AS n_suppresses,
           count(*) FILTER (WHERE verdict = 'raises') AS n_raises,
           count(*) FILTER (WHERE verdict = 'inconclusive') AS n_inconclusive
    FROM final_layer_summary GROUP BY GROUPING SETS ((model, domain), (model))
),
g AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           variant, count(*) AS n, avg(p_after - p_before) AS gain,
           1.96 * stddev_samp(p_after - p_before) / sqrt(count(*)) AS half
    FROM mitigation_prompts
    WHERE split = 'held_out' AND choice = CASE WHEN variant = 'mlp_answer_oracle' THEN 'unconstrained' ELSE 'cost_bounded' END
    GROUP BY GROUPING SETS ((model, domain, variant), (model, variant))
),
gains AS (
    SELECT model, domain,
           max(n) AS n_held_out,
           max(gain) FILTER (WHERE variant = 'heads') AS gain_heads,
           max(half) FILTER (WHERE variant = 'heads') AS gain_heads_pm,
           max(gain) FILTER (WHERE variant = 'mlp_top1') AS gain_mlp_top1,
           max(half) FILTER (WHERE variant = 'mlp_top1') AS gain_mlp_top1_pm,
           max(gain) FILTER (WHERE variant = 'mlp_answer_oracle') AS gain_mlp_answer_oracle,
           max(half) FILTER (WHERE variant = 'mlp_answer_oracle') AS gain_mlp_answer_oracle_pm
    FROM g GROUP BY model, domain
),
costs AS (
    SELECT model, CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
           avg(text_delta_logp) FILTER (WHERE variant = 'heads') AS text_delta_logp_heads,
           avg(text_delta_logp) FILTER (WHERE variant = 'mlp_top1') AS text_delta_logp_mlp_top1,
           avg(control_delta_logp) FILTER (WHERE variant = 'heads') AS control_delta_logp_heads,
           avg(control_delta_logp) FILTER (WHERE variant = 'mlp_top1') AS control_delta_logp_mlp_top1
    FROM mitigation WHERE choice = 'cost_bounded' GROUP BY GROUPING SETS ((model, domain), (model))
)
SELECT v.model, v.domain, v.n_partitions, v.n_suppresses, v.n_raises, v.n_inconclusive,
       p.n_prompts, p.delta_p, p.delta_p_lo, p.delta_p_hi, p.share_dropped,
       gains.n_held_out, gains.gain_heads, gains.gain_heads_pm, gains.gain_mlp_top1, gains.gain_mlp_top1_pm,
       gains.gain_mlp_answer_oracle, gains.gain_mlp_answer_oracle_pm,
       costs.text_delta_logp_heads, costs.text_delta_logp_mlp_top1,
       costs.control_delta_logp_heads, costs.control_delta_logp_mlp_top1
FROM verdicts AS v
JOIN pooled AS p USING (model, domain)
LEFT JOIN gains USING (model, domain)
LEFT JOIN costs USING (model, domain)
ORDER BY v.model, v.domain = 'all', v.domain
