-- Argument-passing heads of one model and relation per shot, in set order: effect% (interval), relation-word effect%, specificity, attention END->S, copy AUC (interval), Pearson r (interval)
-- METHOD.md §4. Statistics over the prompts the model answers correctly (n; n_all: every prompt). effect_pct:
-- path-patching effect% on M under subject corruption (negative = patching the head lowers M, i.e. the head
-- matters); effect_lo/effect_hi its bootstrap 95% interval; effect_all_pct over every prompt.
-- specificity = effect_pct - effect_relation_pct: negative = the head matters more for the subject than
-- for the relation word (task-specific); NULL when there was no relation-word corruption.
-- subject_top_share / sink_share: share of prompts whose largest attention target is a subject token / position 0.
-- copy_auc: share of the relation's other subject tokens the prompt's own subject beats in the head's logit lens
-- (0.5 = no preference), over the prompts whose answer is not a subject token; pearson_r: attention END->S vs DLA
-- onto the subject across those prompts (secondary), r_lo/r_hi its 95% interval.
SELECT model, relation, shot, set_order,
       'L' || layer || '.H' || head AS head_name, layer, head,
       effect_pct, effect_lo, effect_hi, effect_all_pct,
       effect_relation_pct,
       effect_pct - effect_relation_pct AS specificity,
       mean_attn_to_s, subject_top_share, sink_share,
       copy_auc, copy_auc_lo, copy_auc_hi, copy_auc_all,
       pearson_r, r_lo, r_hi,
       n, n_all
FROM head_summary
WHERE model = $model AND relation = $relation AND in_head_set
ORDER BY shot, set_order, layer, head
