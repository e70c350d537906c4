-- The claims of one reproduction ($run_id) as a baseline file for `factrecall reproduce --baseline` (or a spec's baseline key)
-- Export with --format csv --out FILE; `factrecall runs` lists the run ids.
SELECT model, relation, shot, claim, value, verdict
FROM reproduction_claims
WHERE run_id = $run_id
ORDER BY model, relation, shot, claim
