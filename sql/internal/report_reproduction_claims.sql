-- The claims one reproduction recorded.
SELECT * FROM reproduction_claims WHERE run_id = $run_id ORDER BY model, relation, shot, step, claim;
