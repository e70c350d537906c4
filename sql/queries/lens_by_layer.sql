-- Logit lens at END by depth: median and interquartile range of p(answer), mean rank and top-1 share per model, relation, shot and layer
-- METHOD.md §7. layer -1 = the embeddings; the last layer equals the model's own output.
SELECT model, relation, shot, layer,
       count(*) AS n,
       median(p_answer) AS median_p_answer,
       quantile_cont(p_answer, 0.25) AS p_answer_q25,
       quantile_cont(p_answer, 0.75) AS p_answer_q75,
       avg(rank_answer) AS mean_rank_answer,
       avg((rank_answer = 0)::INTEGER) AS top1_share,
       avg(entropy) AS mean_entropy
FROM lens
GROUP BY model, relation, shot, layer
ORDER BY model, relation, shot, layer
