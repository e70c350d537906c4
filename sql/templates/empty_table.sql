-- {table} has no rows yet: querying it says which command fills it.
CREATE VIEW {table} AS SELECT * FROM (SELECT 1 AS missing) WHERE error('{message}') IS NULL;
