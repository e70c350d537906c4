-- The paper's claims per model, domain, relation and shot: each claim's statistic, interval, n and verdict (holds, does not, inconclusive, not tested)
-- METHOD.md §10 (tasks/claims.py has the rules). One row per claim of every partition's current claims
-- result; source_result_id names the heads, mlp or final_layer result the statistic comes from.
SELECT model, domain, relation, shot, step, claim, verdict, value, lo, hi, n, threshold, note, source_result_id
FROM claims
ORDER BY model, domain, relation, shot, step, claim
