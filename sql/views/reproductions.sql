-- reproductions: one row per `factrecall reproduce`: the spec (name, version, hash, text), what it was
-- compared with, the verdict counts, the number of drifted statistics and the verdict line it printed.
CREATE VIEW reproductions AS SELECT * FROM _reproductions;
