-- reproduction_claims: the claims each reproduction found, one row per (run, model, relation, shot, claim),
-- with the claims result and the upstream result each statistic comes from.
CREATE VIEW reproduction_claims AS SELECT * FROM _reproduction_claims;
