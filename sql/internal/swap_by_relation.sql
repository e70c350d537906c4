-- Argument-swap success rate with its interval per relation and shot for one model (current mlp results).
SELECT relation, shot, swap_success, swap_success_lo, swap_success_hi
FROM function_application WHERE model = $model AND swap_success IS NOT NULL ORDER BY relation, shot
