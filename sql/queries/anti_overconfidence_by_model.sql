-- Per model: in how many (relation, shot) partitions the last layer suppresses the answer, the mean change of p(answer), and the mean held-out gain of each deployable mitigation
-- METHOD.md §7. n_suppresses counts partitions whose delta_p interval lies below 0; mean_* average the
-- partitions' means (each partition weighs the same).
WITH m AS (
    SELECT model, relation, shot,
           max(delta_p) FILTER (WHERE variant = 'heads') AS gain_heads,
           max(delta_p) FILTER (WHERE variant = 'mlp_top1') AS gain_mlp_top1,
           max(delta_p) FILTER (WHERE variant = 'mlp_answer') AS gain_mlp_answer_oracle,
           max(text_delta_logp) FILTER (WHERE variant = 'heads') AS text_cost_heads,
           max(text_delta_logp) FILTER (WHERE variant = 'mlp_top1') AS text_cost_mlp_top1
    FROM mitigation
    GROUP BY model, relation, shot
)
SELECT s.model,
       count(*) AS n_partitions,
       count(*) FILTER (WHERE s.verdict = 'suppresses') AS n_suppresses,
       count(*) FILTER (WHERE s.verdict = 'raises') AS n_raises,
       avg(s.delta_p) AS mean_delta_p,
       avg(s.share_dropped) AS mean_share_dropped,
       avg(m.gain_heads) AS mean_held_out_gain_heads,
       avg(m.gain_mlp_top1) AS mean_held_out_gain_mlp_top1,
       avg(m.gain_mlp_answer_oracle) AS mean_held_out_gain_mlp_answer_oracle,
       avg(m.text_cost_heads) AS mean_text_delta_logp_heads,
       avg(m.text_cost_mlp_top1) AS mean_text_delta_logp_mlp_top1
FROM final_layer_summary AS s
LEFT JOIN m USING (model, relation, shot)
GROUP BY s.model
ORDER BY s.model
