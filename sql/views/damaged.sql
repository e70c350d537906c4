-- damaged: files the tables' logs name that are missing, truncated or unreadable, with the partition and
-- result they belong to; those results are left out of every view, and the next run recomputes them.
CREATE VIEW damaged AS SELECT * FROM _damaged;
