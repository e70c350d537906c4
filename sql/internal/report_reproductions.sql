-- The reproductions of a spec, latest first (the report's verdict and drift history).
SELECT run_id, spec, strftime(started_at, '%Y-%m-%d %H:%M') AS started_at, verdict, summary, n_holds, n_does_not,
       n_inconclusive, n_not_tested, n_drifted, compared_with, spec_sha256, spec_text
FROM reproductions WHERE spec = $spec ORDER BY reproductions.started_at DESC;
