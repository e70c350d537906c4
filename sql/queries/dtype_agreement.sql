-- Do the claims read in bfloat16 (or float16) agree with the float32 reference? Side by side per claim
-- METHOD.md §9. A model read in another dtype is stored as another model ("<model>.bf16", "<model>.fp16"); each
-- of its current claims is paired with the float32 claim of the same model, relation, shot and claim.
-- difference = value (low precision) - value (float32); same_verdict: whether the two verdicts are the same.
WITH c AS (
    SELECT *, regexp_replace(model, '\.(bf16|fp16)$', '') AS base,
           CASE WHEN model LIKE '%.bf16' THEN 'bfloat16' WHEN model LIKE '%.fp16' THEN 'float16' ELSE 'float32' END
               AS dtype
    FROM claims
)
SELECT ref.base AS model, low.dtype, ref.relation, ref.shot, ref.step, ref.claim,
       ref.value AS value_float32, ref.lo AS lo_float32, ref.hi AS hi_float32, ref.verdict AS verdict_float32,
       low.value AS value_low, low.lo AS lo_low, low.hi AS hi_low, low.verdict AS verdict_low,
       low.value - ref.value AS difference, low.verdict = ref.verdict AS same_verdict
FROM c AS ref
JOIN c AS low ON low.base = ref.base AND low.relation = ref.relation AND low.shot = ref.shot AND low.claim = ref.claim
WHERE ref.dtype = 'float32' AND low.dtype <> 'float32'
ORDER BY model, low.dtype, ref.relation, ref.shot, ref.step, ref.claim
