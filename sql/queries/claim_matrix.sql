-- The paper's claims per model, domain, relation and shot: each claim's statistic, interval, n and verdict (holds, does not, inconclusive, not tested)
-- METHOD.md §10 (tasks/claims.py has the rules). One row per claim of every partition's current claims
-- result: the statistic on the prompts the model answers correctly (value, lo, hi, n), the effect size it is judged
-- against (threshold), the stated null (null_value), and the same statistic over every prompt (value_all, n_all);
-- source_result_id names the heads, mlp or final_layer result the statistic comes from.
SELECT model, domain, relation, shot, step, claim, verdict, value, lo, hi, n, threshold, null_value, value_all,
       lo_all, hi_all, n_all, note, source_result_id
FROM claims
ORDER BY model, domain, relation, shot, step, claim
