-- runs: one row per command run: code and package versions, settings, models' and relations' hashes,
-- what happened to each partition, and the version of every table after the run (JSON strings).
CREATE VIEW runs AS SELECT * FROM _runs;
