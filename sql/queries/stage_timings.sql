-- Wall time of each stage per model: results computed, mean, median and max seconds per (relation, shot)
-- From the results catalogue (seconds as each stage recorded it: capture, heads, mlp, final_layer), over
-- the current results. A stage's time does not include the upstream results it needed (they are results
-- of their own stage).
SELECT model, stage,
       count(*) AS n_partitions,
       avg(seconds) AS mean_seconds,
       median(seconds) AS median_seconds,
       max(seconds) AS max_seconds
FROM results
WHERE status = 'current' AND seconds IS NOT NULL
GROUP BY model, stage
ORDER BY model, stage
