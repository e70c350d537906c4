-- The figures of the given results ($ids: a list of result ids).
SELECT model, relation, shot, stage, name, png FROM stored.plots
WHERE list_contains($ids, result_id) ORDER BY model, relation, shot;
