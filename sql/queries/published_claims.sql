-- The current claims with everything that produced them, one row per (model, relation, shot, claim): the file to publish
-- METHOD.md §11. Write it with `--format csv --out results/<spec>/claims-<run>.csv`; `factrecall query --published
-- results/<spec>` reads such files back without the store (views claims and models: claims_by_size, claim_matrix,
-- claims_by_domain run unchanged). Per row: the model (family, dtype, parameter count, file sha256), the relation
-- (domain, content hash), the claim's statistic, interval and verdict, and the claims result it comes from (its id,
-- input hash, stage version, code digest, settings, run and the code version of that run).
SELECT c.model, m.family, m.dtype, m.params, r.model_sha256, c.relation, c.domain, r.relation_hash, c.shot,
       c.step, c.claim, c.statistic, c.value, c.lo, c.hi, c.n, c.threshold, c.verdict, c.note,
       c.null_value, c.value_all, c.lo_all, c.hi_all, c.n_all,
       c.result_id, c.source_result_id, r.input_hash, r.stage_version, r.code_digest, r.max_prompts, r.seed,
       r.run_id, u.code_version, r.committed_at
FROM claims c
JOIN results r ON r.result_id = c.result_id
LEFT JOIN models m ON m.model = c.model
LEFT JOIN runs u ON u.run_id = r.run_id
ORDER BY c.model, c.relation, c.shot, c.step, c.claim
