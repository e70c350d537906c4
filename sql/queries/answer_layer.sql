-- At which layer does the answer appear: where the task-aware component c pushes the answer hardest, where the answer becomes top-1 in c's lens and in the residual's, and the causal checks, per model, relation and shot
-- METHOD.md §6. c = m - sum_h beta_B o, cross-fitted over two halves of the prompts answered correctly: a prompt's c
-- comes from the other half's design B fit, and it is judged at the layer the other half chose (best_layer: half A's
-- choice, where half B is judged; best_layer_b: half B's). push: c's push toward the answer (DLA(c, answer) - mean
-- DLA(c, other answers of the partition)) minus the same c's push toward the other prompts' answers (the shuffled-
-- prompt null; bootstrap 95% interval); push_mlp: the same for the MLP output m itself; push_intercept: for design B's
-- shared intercept; push_all: the whole analysis over every prompt. answer_appears_layer / residual_top1_layer: first
-- analysed layer where the answer is top-1 for at least half the judged prompts in the logit lens of c / of the
-- residual leaving the layer. removal_delta_p: change of p(answer) when the prompt's c is removed at END in the
-- layer it is judged at (judged prompts). swap_success: share of eligible prompts whose prediction becomes X''s object when the head set's
-- z at END are replaced by their values in the run about X' (decided at the first token where the two objects
-- differ; Wilson 95% interval); swap_chance: the same with a random head set of the same size; swap_excluded_n:
-- prompts left out because an answer token is a subject token; swap_stayed: share of prompts with the answer top-1
-- before that keep it.
SELECT model, domain, relation, shot, head_set, n_prompts, n_correct, best_layer, best_layer_b, push, push_lo, push_hi,
       push_n,
       push_raw, push_null, push_mlp, push_mlp_lo, push_mlp_hi, push_intercept, push_all, push_all_lo, push_all_hi,
       answer_appears_layer, residual_top1_layer,
       removal_p_before, removal_p_after, removal_delta_p, removal_delta_p_lo, removal_delta_p_hi,
       swap_n, swap_success, swap_success_lo, swap_success_hi, swap_chance, swap_chance_lo, swap_chance_hi,
       swap_excluded_n, swap_undecidable_n, swap_stayed_n, swap_stayed, skipped_reason
FROM function_application
ORDER BY model, relation, shot
