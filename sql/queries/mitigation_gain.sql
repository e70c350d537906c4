-- How much mitigating the last layer's suppression raises held-out confidence, and what it costs on other relations and plain text
-- METHOD.md §7. Components and alpha were chosen on the calibration half (split_seed); every delta is
-- after - before on the held-out half (or the controls), mean with its bootstrap 95% interval.
-- choice: "unconstrained" (alpha maximises the calibration log p) or "cost_bounded" (the same among the
-- alphas whose plain-text cost on the calibration passages is within text_cost_bound nats per token);
-- text_delta_logp is the cost on the held-out passages. The oracle variant (mlp_answer_oracle) needs the
-- answer label: not deployable, and not an upper bound of the others. note says why a row is a no-op.
SELECT model, domain, relation, shot, variant, choice, oracle, components, alpha, text_cost_bound, n_held_out,
       p_before, p_after, delta_p, delta_p_lo, delta_p_hi,
       delta_acc, delta_acc_lo, delta_acc_hi,
       delta_logp, delta_logp_lo, delta_logp_hi,
       n_control, control_delta_logp, control_delta_logp_lo, control_delta_logp_hi,
       n_text_tokens, calibration_text_delta_logp, text_delta_logp, text_delta_logp_lo, text_delta_logp_hi,
       note
FROM mitigation
ORDER BY model, relation, shot, variant, choice
