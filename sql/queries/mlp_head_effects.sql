-- Which heads does the MLP after the argument passers erase, and which does it amplify: the head-set heads per model, relation and shot
-- METHOD.md §5. beta from design A (one regression per prompt over the d_model coordinates of the
-- MLP's output at END on that layer's head outputs); the head's net contribution after the MLP is
-- (1 + beta) o: erased (beta <= -0.5), attenuated (-0.5 < beta < 0), amplified (beta > 0). label is
-- that of the median beta; mean_beta_lo/hi its bootstrap 95% interval; pooled_beta is design B.
SELECT r.model, r.relation, r.shot, 'L' || r.layer || '.H' || r.head AS head_name,
       r.label, r.median_beta, r.mean_beta, r.mean_beta_lo, r.mean_beta_hi,
       r.share_erased, r.share_attenuated, r.share_amplified, r.pooled_beta, r.n,
       l.median_r2, l.pooled_r2
FROM regression_heads AS r
JOIN regression_layers AS l USING (model, relation, shot, layer)
WHERE r.in_head_set
ORDER BY r.model, r.relation, r.shot, r.median_beta
