-- Mean DLA of every last-layer component onto the answer and onto the competitor, with n and the share of prompts where it is negative
-- METHOD.md §7. Components: each head "L{l}.H{h}", its output bias "L{l}.attn_bias", its MLP "L{l}.mlp".
-- se_* are standard errors of the mean (bootstrap intervals are in the plots). Most suppressive first.
SELECT model, relation, shot, component,
       count(*) AS n,
       avg(dla_answer) AS mean_dla_answer,
       stddev_samp(dla_answer) / sqrt(count(*)) AS se_answer,
       avg((dla_answer < 0)::INTEGER) AS share_negative_answer,
       avg(dla_competitor) AS mean_dla_competitor,
       stddev_samp(dla_competitor) / sqrt(count(*)) AS se_competitor
FROM final_components
GROUP BY model, relation, shot, component
ORDER BY model, relation, shot, mean_dla_answer
