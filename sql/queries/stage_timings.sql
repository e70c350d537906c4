-- Wall time of each stage per model: partitions committed, mean, median and max seconds per (relation, shot)
-- From the commit records (seconds as each stage recorded it: capture, heads, mlp, final_layer). The
-- capture a later stage needs is its own stage and is not included in that stage's time.
SELECT model, stage,
       count(*) AS n_partitions,
       avg(seconds) AS mean_seconds,
       median(seconds) AS median_seconds,
       max(seconds) AS max_seconds
FROM commits
WHERE seconds IS NOT NULL
GROUP BY model, stage
ORDER BY model, stage
