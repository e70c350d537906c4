-- The drift rows of one reproduction.
SELECT * FROM drift WHERE run_id = $run_id ORDER BY model, relation, shot, claim;
