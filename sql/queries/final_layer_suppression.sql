-- Does the last layer suppress the correct answer, by how much, and which components do it: per model, relation, shot
-- METHOD.md §7. delta_* = lens at the last layer minus lens entering it (after - before), mean over
-- prompts with its bootstrap 95% interval; share_dropped = share of prompts whose p(answer) drops.
-- verdict: "suppresses" when the interval of delta_p lies below 0 (the paper's claim holds), "raises"
-- when above, else "inconclusive". suppressors: last-layer components whose DLA onto the answer is
-- significantly negative (simultaneous intervals over the n_components_tested, Bonferroni), most negative
-- first; the competitor columns tell a general flattening from a targeted drop.
SELECT model, domain, relation, shot, n, layer AS last_layer,
       p_before, p_after, delta_p, delta_p_lo, delta_p_hi,
       share_dropped, delta_logit, delta_logit_lo, delta_logit_hi,
       delta_logit_competitor, entropy_before, entropy_after,
       verdict, suppressors, n_components_tested, suppression_dla
FROM final_layer_summary
ORDER BY model, relation, shot
