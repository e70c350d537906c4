-- models: each model the store's runs used, as last recorded: family, sizes, parameter count (n_params as read,
-- n_params_nominal: a packaged model's published count) and the sha256 of its file. `params` is the count the
-- size axis uses: the published one where known, else the one read.
CREATE VIEW models AS
SELECT model, ref, family, coalesce(n_params_nominal, n_params) AS params, n_params, n_params_nominal, n_layers,
       n_heads, n_kv_heads, d_model, vocab_size, dtype, file_sha256, run_id, recorded_at
FROM _models
QUALIFY row_number() OVER (PARTITION BY model ORDER BY recorded_at DESC) = 1;
