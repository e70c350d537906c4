-- commits: one row per committed partition stage (its commit record); the other views keep only the
-- tables a record lists.
-- Of a record's summary fields only seconds (wall time of the stage, where recorded) is a column here
-- (see Store.committed() for the rest). {root} = store root.
CREATE OR REPLACE VIEW commits AS
SELECT model, relation, shot, stage, input_hash, run_id, tables, committed_at::TIMESTAMPTZ AS committed_at, seconds
FROM read_json_auto('{root}/_commits/*/*/*/*.json', hive_partitioning = false,
                    columns = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER', 'stage': 'VARCHAR',
                               'input_hash': 'VARCHAR', 'run_id': 'VARCHAR', 'tables': 'VARCHAR[]',
                               'committed_at': 'VARCHAR', 'seconds': 'DOUBLE'});
