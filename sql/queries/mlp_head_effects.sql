-- Which heads does the MLP after the argument passers erase, and which does it amplify: the head-set heads per model, relation and shot
-- METHOD.md §5. pooled_beta is design B (primary: one beta per head shared by the relation's prompts answered
-- correctly, and a task-shared vector intercept), with its bootstrap 95% interval and standard error; the head's net
-- contribution after the MLP is (1 + beta) o: reversed (beta < -1.5), erased (-1.5 <= beta <= -0.5), attenuated
-- (-0.5 < beta < 0), amplified (beta > 0): pooled_label. Design A (one regression per prompt over the d_model
-- coordinates, secondary): label of the median beta, mean_beta with its interval, the label shares. pooled_r2 is
-- design B's R² at the head's layer beside its shuffled-prompt null (pooled_r2_null_q95).
SELECT r.model, r.relation, r.shot, 'L' || r.layer || '.H' || r.head AS head_name,
       r.pooled_label, r.pooled_beta, r.pooled_beta_lo, r.pooled_beta_hi, r.pooled_beta_se, r.pooled_beta_all,
       l.pooled_r2, l.pooled_r2_lo, l.pooled_r2_hi, l.pooled_r2_null_q95, l.n_judged,
       r.label AS label_design_a, r.median_beta, r.mean_beta, r.mean_beta_lo, r.mean_beta_hi,
       r.share_reversed, r.share_erased, r.share_attenuated, r.share_amplified, r.n, l.median_r2
FROM regression_heads AS r
JOIN regression_layers AS l USING (model, relation, shot, layer)
WHERE r.in_head_set
ORDER BY r.model, r.relation, r.shot, r.pooled_beta
