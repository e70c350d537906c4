-- stale: selected results whose upstream changed (e.g. another capture was selected for the partition);
-- the default views leave them out, and the next run of their stage recomputes them.
CREATE VIEW stale AS
SELECT model, relation, shot, stage, result_id, status_reason AS reason, run_id, committed_at
FROM _results WHERE status = 'stale'
ORDER BY model, relation, shot, stage;
