-- Mean p(answer), top-1 accuracy, mean metric M and n per model, relation and shot (clean prompts)
SELECT model, domain, relation, shot,
       count(*) AS n,
       avg(p_answer) AS mean_p_answer,
       avg(top1::INTEGER) AS top1_accuracy,
       avg(metric_m) AS mean_metric_m
FROM logits
WHERE variant = 'clean'
GROUP BY model, domain, relation, shot
ORDER BY model, domain, relation, shot
