-- commits: one row per committed partition (its commit record); the other views keep only these.
-- Summary fields of a record are not columns here (see Store.committed()). {root} = store root.
CREATE OR REPLACE VIEW commits AS
SELECT model, relation, shot, input_hash, run_id, tables, committed_at::TIMESTAMPTZ AS committed_at
FROM read_json_auto('{root}/_commits/*/*/*/commit.json', hive_partitioning = false,
                    columns = {'model': 'VARCHAR', 'relation': 'VARCHAR', 'shot': 'INTEGER',
                               'input_hash': 'VARCHAR', 'run_id': 'VARCHAR', 'tables': 'VARCHAR[]',
                               'committed_at': 'VARCHAR'});
