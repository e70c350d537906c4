-- Mean p(answer) and top-1 accuracy per model, domain (and over all domains) and shot, pooled over the domain's relations (clean prompts)
-- 95% intervals: normal approximation over prompts (mean ± 1.96 standard errors); every prompt weighs
-- the same, so a relation with more prompts weighs more (accuracy_by_shot has each relation's own).
SELECT model,
       CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
       shot,
       count(DISTINCT relation) AS n_relations,
       count(*) AS n,
       avg(p_answer) AS mean_p_answer,
       avg(p_answer) - 1.96 * stddev_samp(p_answer) / sqrt(count(*)) AS mean_p_answer_lo,
       avg(p_answer) + 1.96 * stddev_samp(p_answer) / sqrt(count(*)) AS mean_p_answer_hi,
       avg(top1::INTEGER) AS top1_accuracy,
       avg(top1::INTEGER) - 1.96 * sqrt(avg(top1::INTEGER) * (1 - avg(top1::INTEGER)) / count(*)) AS top1_accuracy_lo,
       avg(top1::INTEGER) + 1.96 * sqrt(avg(top1::INTEGER) * (1 - avg(top1::INTEGER)) / count(*)) AS top1_accuracy_hi
FROM logits
WHERE variant = 'clean'
GROUP BY GROUPING SETS ((model, domain, shot), (model, shot))
ORDER BY model, domain = 'all', domain, shot
