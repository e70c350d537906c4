-- {table}: the rows of every selected, current result (one coherent result per model, relation, shot
-- and stage; stale and damaged results are left out, see the stale and damaged views). capture_id names
-- the capture the row's result was computed from (for a capture table, the result itself); domain is the
-- relation's (factual, commonsense, linguistic, bias, user) as the relations view records it.
CREATE VIEW {table} AS
SELECT t.model, t.relation, d.domain, t.shot, t.result_id, u.capture_id,
       t.* EXCLUDE (model, relation, shot, result_id)
FROM _current_{table} AS t
LEFT JOIN _upstream AS u USING (result_id)
LEFT JOIN _domains AS d USING (relation);
