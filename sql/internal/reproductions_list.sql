-- The reproductions `factrecall runs` lists: latest first, optionally of one spec ($spec = '' for all).
SELECT run_id, spec, started_at, verdict, n_holds, n_does_not, n_inconclusive, n_not_tested, n_drifted,
       compared_with, summary
FROM reproductions
WHERE $spec = '' OR spec = $spec
ORDER BY started_at DESC
LIMIT CAST($limit AS INTEGER);
