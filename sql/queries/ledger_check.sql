-- Worst ledger error |sum of DLA - model logit| per model, relation and shot, and the METHOD.md §2 check
SELECT model, relation, shot,
       count(*) AS n,
       max(abs("error")) AS max_error,
       max(abs("error") / greatest(1.0, abs(model_logit))) AS max_rel_error,
       max(abs("error") / greatest(1.0, abs(model_logit))) <= 1e-3 AS ok
FROM ledger
GROUP BY model, relation, shot
ORDER BY model, relation, shot
