-- Argument-passing heads of one model and relation per shot, in set order: effect% (interval), relation-word effect%, specificity, attention END->S, Pearson r (interval)
-- METHOD.md §4. effect_pct: path-patching effect% on M under subject corruption (negative = patching
-- the head lowers M, i.e. the head matters); effect_lo/effect_hi its bootstrap 95% interval.
-- specificity = effect_pct - effect_relation_pct: negative = the head matters more for the subject than
-- for the relation word (task-specific); NULL when there was no relation-word corruption.
-- pearson_r: attention END->S vs DLA onto the subject across prompts, r_lo/r_hi its 95% interval.
SELECT model, relation, shot, set_order,
       'L' || layer || '.H' || head AS head_name, layer, head,
       effect_pct, effect_lo, effect_hi,
       effect_relation_pct,
       effect_pct - effect_relation_pct AS specificity,
       mean_attn_to_s,
       pearson_r, r_lo, r_hi,
       n
FROM head_summary
WHERE model = $model AND relation = $relation AND in_head_set
ORDER BY shot, set_order, layer, head
