-- drift: each claim statistic of a reproduction against the reproduction of the same spec before it (or
-- its pinned baseline): before, now, difference, tolerance, verdicts, and whether (and why) it drifted.
CREATE VIEW drift AS SELECT * FROM _drift;
