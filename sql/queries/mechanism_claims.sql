-- Do the paper's step 2-3 claims hold per model: share of head-layer MLPs with median R^2 >= 0.5, share of argument-passing heads amplified, argument-swap success rate, push margin
-- METHOD.md §5-6. Averages over the model's analysed partitions (each weighs the same); n_partitions
-- counts those with a head set (skipped ones are left out); n_push_positive counts partitions whose push
-- interval at the best layer lies above 0.
SELECT model,
       count(*) AS n_partitions,
       avg(share_head_layers_r2_ge_half) AS share_head_layer_mlps_r2_ge_half,
       avg(share_set_heads_amplified) AS share_argument_heads_amplified,
       avg(swap_success) AS mean_swap_success,
       avg(swap_stayed) AS mean_swap_stayed,
       avg(push) AS mean_push,
       count(*) FILTER (WHERE push_lo > 0) AS n_push_positive,
       avg(removal_delta_p) AS mean_removal_delta_p
FROM function_application
WHERE skipped_reason IS NULL
GROUP BY model
ORDER BY model
