-- Top 10 heads by most negative path-patching effect% (subject corruption) per model, relation and shot
-- effect_pct < 0: patching the head lowers M (METHOD.md §4); heads without an effect are left out.
SELECT model, relation, shot, layer, head,
       'L' || layer || '.H' || head AS head_name,
       effect_pct, effect_lo, effect_hi, effect_relation_pct,
       effect_simul_lo, effect_simul_hi, significant,
       mean_attn_to_s, attention_passes, in_head_set,
       row_number() OVER (PARTITION BY model, relation, shot
                          ORDER BY effect_pct ASC, layer, head) AS "rank"
FROM head_summary
WHERE effect_pct IS NOT NULL
QUALIFY "rank" <= 10
ORDER BY model, relation, shot, "rank"
