-- stored.{table}: the rows of every committed, intact result, selected or not, with result_id and
-- capture_id; join results (result_id) for the settings that tell them apart. Different results of one
-- key are different computations: filter on result_id before aggregating.
CREATE VIEW stored.{table} AS
SELECT t.model, t.relation, d.domain, t.shot, t.result_id, u.capture_id,
       t.* EXCLUDE (model, relation, shot, result_id)
FROM _stored_{table} AS t
LEFT JOIN _upstream AS u USING (result_id)
LEFT JOIN _domains AS d USING (relation);
