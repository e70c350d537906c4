-- The models that have at least one current result.
SELECT DISTINCT model FROM results WHERE status = 'current' ORDER BY model
