-- At which layer does the answer appear: where the task-aware component c pushes the answer hardest, where the answer becomes top-1 in c's lens and in the residual's, and the causal checks, per model, relation and shot
-- METHOD.md §6. push = DLA(c, answer) - mean DLA(c, other objects of the relation) at its best layer
-- (bootstrap 95% interval). answer_appears_layer / residual_top1_layer: first analysed layer where the
-- answer is top-1 for at least half the prompts in the logit lens of c / of the residual leaving the
-- layer. removal_delta_p: change of p(answer) when c is removed at END in the best layer;
-- swap_success: share of eligible prompts (the answer top-1 before, X''s object not) whose top-1 becomes
-- the object of X' when the head set's outputs are taken from the prompt about X'; swap_chance: the same
-- with a random head set of the same size; swap_stayed: share of prompts with the answer top-1 before
-- that keep it.
SELECT model, domain, relation, shot, head_set, best_layer, push, push_lo, push_hi, push_n,
       answer_appears_layer, residual_top1_layer,
       removal_p_before, removal_p_after, removal_delta_p, removal_delta_p_lo, removal_delta_p_hi,
       swap_n, swap_success, swap_success_lo, swap_success_hi, swap_chance, swap_chance_lo, swap_chance_hi,
       swap_stayed_n, swap_stayed, skipped_reason
FROM function_application
ORDER BY model, relation, shot
