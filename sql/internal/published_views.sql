-- The views of published claims (registered as _published, one row per (model, relation, shot, claim)): claims with
-- the claims view's columns, models with the models view's (one row per model), and published (every column).
CREATE VIEW published AS SELECT * FROM _published;
CREATE VIEW claims AS
SELECT model, relation, domain, shot, result_id, claim, step, statistic, value, lo, hi, n, threshold, verdict, note,
       source_result_id, null_value, value_all, lo_all, hi_all, n_all
FROM _published;
CREATE VIEW models AS
SELECT model, any_value(family) AS family, any_value(dtype) AS dtype, any_value(params) AS params,
       any_value(model_sha256) AS file_sha256
FROM _published GROUP BY model;
