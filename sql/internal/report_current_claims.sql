-- The store's current claims (every partition), with each relation's domain.
SELECT * FROM claims
ORDER BY model, relation, shot, step, claim;
