-- runs: one row per command run: code and package versions, settings, models' and relations' hashes,
-- what happened to each partition, and the version of every table after the run (JSON strings).
-- A run is recorded when it starts and again when it ends: a run that did not finish (stopped, crashed, a lost
-- machine, or still running) shows its start row, with finished_at, partitions, refused, timings and versions null.
CREATE VIEW runs AS SELECT * FROM _runs
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY finished_at DESC NULLS LAST) = 1;
