"""Arrow schemas of the store's tables (METHOD.md §2, §3, §8).

Vectors are ``vector_type(d)``: fixed-size lists of float32 of length d = d_model (one model's
residual width), so schemas are functions of d: ``schema(table, d_model)``.

Partitioned tables (``TABLES``) live under ``<root>/<table>/model=/relation=/shot=/``; their files do
not hold the partition columns (model, relation, shot), which come from the path. Per-model tables
(``MODEL_TABLES``) live under ``<root>/<table>/model=<m>/`` and do hold a ``model`` column.
Conventions: ``variant`` names the prompt variant ("clean" for the unmodified prompt); END is the
last prompt token; positions are 0-based token indices; components in ``dla`` are named "embed",
"pos_embed", "L{l}.H{h}", "L{l}.attn_bias", "L{l}.mlp", "final_norm_bias", "unembed_bias".
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["vector_type", "schema", "TABLES", "HEAD_TABLES", "FINAL_LAYER_TABLES", "MECHANISM_TABLES",
           "MODEL_TABLES", "PARTITION_COLUMNS"]

#: Partitioned tables, written through ``Store.open_partition``.
TABLES: tuple[str, ...] = ("prompts", "logits", "heads", "layers", "resid_end", "dla", "ledger", "unembed")
#: Tables of the argument-passing-head analysis (stage "heads", METHOD.md §4), same partitioning.
HEAD_TABLES: tuple[str, ...] = ("head_prompts", "mlp_patching", "head_summary", "head_sets")
#: Tables of the final-layer analysis (stage "final_layer", METHOD.md §7), same partitioning.
FINAL_LAYER_TABLES: tuple[str, ...] = ("lens", "final_components", "final_layer_summary", "mitigation",
                                       "mitigation_curve", "mitigation_prompts")
#: Tables of the MLP-over-heads and function-application analysis (stage "mlp", METHOD.md §5-6).
MECHANISM_TABLES: tuple[str, ...] = ("regression_betas", "regression_prompts", "regression_heads",
                                     "regression_layers", "argument_swap", "function_application")
#: Per-model tables, written through ``Store.write_model_table``.
MODEL_TABLES: tuple[str, ...] = ("model_info",)
#: Columns that come from the Hive path of partitioned tables (must not be in their files).
PARTITION_COLUMNS: tuple[str, ...] = ("model", "relation", "shot")


def vector_type(d: int) -> pa.DataType:
    """Fixed-size list of ``d`` float32 values (one d_model vector)."""
    if int(d) <= 0:
        raise ValueError(f"vector length must be positive, got {d}")
    return pa.list_(pa.float32(), int(d))


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


def _key() -> list[pa.Field]:
    return [_f("prompt_id", pa.int32()), _f("variant", pa.string())]


def _prompts(d: int) -> list[pa.Field]:
    return [
        _f("prompt_id", pa.int32()),
        _f("variant", pa.string()),
        _f("fact_index", pa.int32()),
        _f("template_index", pa.int32()),
        _f("subject", pa.string()),
        _f("object", pa.string()),
        _f("query_subject", pa.string()),
        _f("text", pa.string()),
        _f("demo_subjects", pa.list_(pa.string())),
        _f("source_prompt_id", pa.int32()),  # nullable: the clean prompt a variant derives from
        _f("n_tokens", pa.int32()),
        _f("end_pos", pa.int32()),
        _f("s_pos", pa.int32()),
        _f("s_first_pos", pa.int32()),
        _f("subject_token_id", pa.int32()),
        _f("answer_token_id", pa.int32()),
        _f("answer_token", pa.string()),
        _f("object_n_tokens", pa.int32()),
        _f("bos", pa.bool_()),
    ]


def _logits(d: int) -> list[pa.Field]:
    return _key() + [
        _f("answer_logit", pa.float32()),
        _f("p_answer", pa.float32()),
        _f("answer_rank", pa.int32()),  # 0 = top-1
        _f("metric_m", pa.float32()),  # logit(y) - mean over vocab of logits
        _f("top1", pa.bool_()),
        _f("topk_ids", pa.list_(pa.int32())),
        _f("topk_logits", pa.list_(pa.float32())),
        _f("final_norm_scale", pa.float32()),  # sigma_f of the residual entering the final norm at END
        _f("ledger_error", pa.float32()),  # max |sum DLA - real logit| over attributed tokens
    ]


def _heads(d: int) -> list[pa.Field]:
    return _key() + [
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("output", vector_type(d)),  # head's contribution to the residual at END
        _f("attn_to_s", pa.float32()),
        _f("attn", pa.list_(pa.float32())),  # attention weights END -> every position
    ]


def _layers(d: int) -> list[pa.Field]:
    return _key() + [
        _f("layer", pa.int16()),
        _f("attn_bias", vector_type(d)),
        _f("mlp_out", vector_type(d)),
        _f("resid_pre", vector_type(d)),
        _f("resid_post", vector_type(d)),
    ]


def _resid_end(d: int) -> list[pa.Field]:
    return _key() + [
        _f("embed", vector_type(d)),
        _f("pos_embed", vector_type(d)),  # null for models without learned positions
        _f("final_resid", vector_type(d)),
    ]


def _dla(d: int) -> list[pa.Field]:
    return _key() + [
        _f("token_role", pa.string()),  # "answer" | "subject" | "top1"
        _f("token_id", pa.int32()),
        _f("component", pa.string()),
        _f("layer", pa.int16()),  # null for non-layer components
        _f("head", pa.int16()),  # null for non-head components
        _f("value", pa.float32()),
    ]


def _ledger(d: int) -> list[pa.Field]:
    return _key() + [
        _f("token_role", pa.string()),
        _f("token_id", pa.int32()),
        _f("model_logit", pa.float32()),
        _f("dla_sum", pa.float32()),
        _f("error", pa.float32()),
    ]


def _unembed(d: int) -> list[pa.Field]:
    return [
        _f("token_id", pa.int32()),
        _f("token", pa.string()),
        _f("w_u", vector_type(d)),  # column W_U[:, token]
        _f("b_u", pa.float32()),  # 0 when the model has no unembedding bias
    ]


def _model_info(d: int) -> list[pa.Field]:
    return [
        _f("model", pa.string()),
        _f("family", pa.string()),
        _f("n_layers", pa.int32()),
        _f("n_heads", pa.int32()),
        _f("d_model", pa.int32()),
        _f("d_head", pa.int32()),
        _f("norm_kind", pa.string()),  # "layernorm" | "rmsnorm"
        _f("final_norm_gain", vector_type(d)),  # effective gain (1 + w for Gemma)
        _f("final_norm_bias", vector_type(d)),  # zeros for RMSNorm
        _f("vocab_size", pa.int32()),
        _f("dtype", pa.string()),
        _f("source", pa.string()),
        _f("file_sha256", pa.string()),
        _f("bos", pa.bool_()),
        _f("logit_softcap", pa.float32()),  # null when the model has no soft-capping
    ]


def _head_prompts(d: int) -> list[pa.Field]:
    """Per clean prompt x head at END (METHOD.md §4); effects are path-patching effect% on M."""
    return [
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("attn_to_s", pa.float32()),  # attention weight END -> S
        _f("dla_subject", pa.float32()),  # DLA of the head's output onto the subject's first token
        _f("dla_answer", pa.float32()),  # DLA onto the answer token
        _f("subject_rank", pa.int32()),  # rank of the subject token in the logit lens of the output (0 = top)
        _f("m_clean", pa.float32()),  # M = logit(y) - mean vocab logit, clean run
        _f("effect_subject_pct", pa.float32()),  # sender mean over subject-corrupted prompts
        _f("effect_relation_pct", pa.float32()),  # sender = its output on the same prompt with the relation word corrupted (null if none)
    ]


def _mlp_patching(d: int) -> list[pa.Field]:
    return [
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("effect_subject_pct", pa.float32()),
        _f("effect_relation_pct", pa.float32()),
    ]


def _head_summary(d: int) -> list[pa.Field]:
    """Per head over the partition's clean prompts; *_lo/*_hi are bootstrap 95% intervals."""
    return [
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("n", pa.int32()),
        _f("mean_attn_to_s", pa.float64()),
        _f("mean_dla_subject", pa.float64()),
        _f("mean_dla_answer", pa.float64()),
        _f("median_subject_rank", pa.float64()),
        _f("pearson_r", pa.float64()),  # attention END->S vs DLA onto the subject, across prompts
        _f("r_lo", pa.float64()),
        _f("r_hi", pa.float64()),
        _f("effect_pct", pa.float64()),  # 100 (mean M_patched - mean M_clean) / mean M_clean
        _f("effect_lo", pa.float64()),
        _f("effect_hi", pa.float64()),
        _f("effect_relation_pct", pa.float64()),  # same with relation-word corruption (null if none)
        _f("attn_above_layer_median", pa.bool_()),
        _f("in_head_set", pa.bool_()),
        _f("set_order", pa.int16()),  # 1 = largest negative effect in the set; null outside it
    ]


def _head_sets(d: int) -> list[pa.Field]:
    """One row per partition: the task-specific head set and the rule that chose it."""
    return [
        _f("heads", pa.list_(pa.string())),  # "L{l}.H{h}", in set order
        _f("n_heads", pa.int32()),
        _f("rule", pa.string()),  # JSON: coverage, attention filter, effect definition, corruption
        _f("coverage", pa.float64()),
        _f("covered_share", pa.float64()),  # share of the candidates' negative effect the set covers
        _f("covered_share_all", pa.float64()),  # share of all heads' negative effect
        _f("set_effect_pct", pa.float64()),  # sum of the set's head effects (subject corruption)
        _f("set_effect_relation_pct", pa.float64()),  # same under relation-word corruption (null if none)
        _f("n_prompts", pa.int32()),
        _f("n_corrupt_subject", pa.int32()),
        _f("n_corrupt_relation", pa.int32()),
        _f("relation_corruption", pa.string()),  # "word->replacement" pairs used, or why it is missing
        _f("plots", pa.list_(pa.string())),  # PNG paths relative to the store root
        _f("seconds_patching", pa.float64()),
        _f("skipped_reason", pa.string()),  # non-null: the analysis was skipped (e.g. fewer than 2 subjects)
    ]


def _ci(name: str) -> list[pa.Field]:
    """A mean with its bootstrap 95% interval: ``name``, ``name_lo``, ``name_hi``."""
    return [_f(name, pa.float64()), _f(f"{name}_lo", pa.float64()), _f(f"{name}_hi", pa.float64())]


def _lens(d: int) -> list[pa.Field]:
    """Logit lens at END per clean prompt and depth (METHOD.md §7). layer -1 = the embeddings (residual
    entering block 0), layer l = the residual leaving block l; the last layer equals the model's logits.
    The competitor is the highest-logit token other than the answer entering the last layer."""
    return [
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("p_answer", pa.float32()),
        _f("logit_answer", pa.float32()),
        _f("logprob_answer", pa.float32()),
        _f("rank_answer", pa.int32()),  # 0 = top-1
        _f("p_competitor", pa.float32()),
        _f("logit_competitor", pa.float32()),
        _f("rank_competitor", pa.int32()),
        _f("entropy", pa.float32()),  # nats, whole next-token distribution
        _f("top1_token", pa.int32()),
    ]


def _final_components(d: int) -> list[pa.Field]:
    """DLA of each last-layer component (heads "L{l}.H{h}", "L{l}.attn_bias", "L{l}.mlp") at END."""
    return [
        _f("prompt_id", pa.int32()),
        _f("split", pa.string()),  # "calibration" | "held_out" (the mitigation's seeded split)
        _f("component", pa.string()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),  # null for b_O and the MLP
        _f("answer_token", pa.int32()),
        _f("competitor_token", pa.int32()),
        _f("dla_answer", pa.float32()),
        _f("dla_competitor", pa.float32()),
    ]


def _final_layer_summary(d: int) -> list[pa.Field]:
    """One row per partition: what the last layer does to the answer (deltas = after - before the last
    layer, i.e. lens at the last layer minus lens at the one below; bootstrap 95% intervals over prompts)."""
    return [
        _f("n", pa.int32()),
        _f("layer", pa.int16()),  # the last layer's index
        _f("p_before", pa.float64()),
        _f("p_after", pa.float64()),
        *_ci("delta_p"),
        *_ci("delta_logit"),
        *_ci("share_dropped"),  # share of prompts whose p(answer) drops across the last layer
        *_ci("delta_p_competitor"),
        *_ci("delta_logit_competitor"),
        _f("entropy_before", pa.float64()),
        _f("entropy_after", pa.float64()),
        *_ci("delta_entropy"),
        _f("suppressors", pa.list_(pa.string())),  # components with negative mean DLA onto the answer
        _f("suppression_dla", pa.float64()),  # sum of the suppressors' mean DLA onto the answer
        _f("claim_holds", pa.bool_()),  # delta_p_hi < 0: the last layer lowers p(answer) (the paper's claim)
        _f("verdict", pa.string()),  # "suppresses" | "raises" | "inconclusive"
        _f("plots", pa.list_(pa.string())),
        _f("seconds", pa.float64()),
    ]


def _mitigation(d: int) -> list[pa.Field]:
    """One row per mitigation variant: components and alpha chosen on the calibration half, effects on
    the held-out half (after - before, paired, bootstrap 95% intervals), and the cost on controls."""
    return [
        _f("variant", pa.string()),  # "heads" | "mlp_answer" | "mlp_top1"
        _f("oracle", pa.bool_()),  # needs the answer label (an upper bound, not deployable)
        _f("components", pa.list_(pa.string())),
        _f("alpha", pa.float64()),
        _f("split_seed", pa.int64()),
        _f("calibration_share", pa.float64()),
        _f("n_calibration", pa.int32()),
        _f("n_held_out", pa.int32()),
        _f("calibration_delta_logp", pa.float64()),
        _f("p_before", pa.float64()),
        _f("p_after", pa.float64()),
        *_ci("delta_p"),
        _f("acc_before", pa.float64()),
        _f("acc_after", pa.float64()),
        *_ci("delta_acc"),
        _f("logp_before", pa.float64()),
        _f("logp_after", pa.float64()),
        *_ci("delta_logp"),
        _f("control_relations", pa.list_(pa.string())),
        _f("n_control", pa.int32()),
        *_ci("control_delta_logp"),
        *_ci("control_delta_acc"),
        _f("n_text_tokens", pa.int32()),
        *_ci("text_delta_logp"),  # mean over the control corpus' next tokens; null for oracle variants
        _f("note", pa.string()),
    ]


def _mitigation_curve(d: int) -> list[pa.Field]:
    """Every alpha of the grid per variant and split (the choice is made on "calibration")."""
    return [
        _f("variant", pa.string()),
        _f("alpha", pa.float64()),
        _f("split", pa.string()),
        _f("n", pa.int32()),
        _f("mean_p", pa.float64()),
        _f("mean_logp", pa.float64()),
        _f("accuracy", pa.float64()),
    ]


def _mitigation_prompts(d: int) -> list[pa.Field]:
    """Per prompt and variant at the chosen alpha."""
    return [
        _f("prompt_id", pa.int32()),
        _f("split", pa.string()),
        _f("variant", pa.string()),
        _f("alpha", pa.float64()),
        _f("p_before", pa.float32()),
        _f("p_after", pa.float32()),
        _f("logp_before", pa.float32()),
        _f("logp_after", pa.float32()),
        _f("correct_before", pa.bool_()),
        _f("correct_after", pa.bool_()),
    ]


def _regression_betas(d: int) -> list[pa.Field]:
    """Design A (METHOD.md §5) per clean prompt, analysed layer and head: m = sum beta o + b + e at END."""
    return [
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("beta", pa.float64()),  # NaN when the prompt's design is singular
        _f("label", pa.string()),  # erased (beta <= -0.5) | attenuated | unchanged | amplified (beta > 0) | ""
        _f("in_head_set", pa.bool_()),
    ]


def _regression_prompts(d: int) -> list[pa.Field]:
    """Per clean prompt and analysed layer: design A's fit, "stands out", and the task-aware component
    c = m - sum beta o (METHOD.md §5-6). Subject ranks are in the logit lens of the residual before /
    after the MLP (0 = top); DLA uses the final norm frozen at its real scale."""
    return [
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("intercept", pa.float64()),
        _f("r2", pa.float64()),
        _f("rank", pa.int32()),  # rank of the [d, H+1] design
        _f("singular", pa.bool_()),
        _f("subject_rank_before", pa.int32()),
        _f("subject_rank_after", pa.int32()),
        _f("dla_subject_heads", pa.float64()),  # DLA onto the subject of sum_h o
        _f("dla_subject_scaled", pa.float64()),  # DLA onto the subject of sum_h (1 + beta) o
        _f("c_answer_rank", pa.float64()),  # rank of the answer in c's logit lens (NaN if singular)
        _f("c_dla_answer", pa.float64()),
        _f("c_push", pa.float64()),  # DLA(c, answer) - mean DLA(c, other objects of the relation)
        _f("c_cosine_answer", pa.float64()),  # cosine(c, W_U[:, answer])
        _f("answer_rank_after", pa.int32()),  # rank of the answer in the lens of the residual leaving the layer
    ]


def _regression_heads(d: int) -> list[pa.Field]:
    """Per analysed layer and head over prompts: the distribution of design A's beta (mean with a
    bootstrap 95% interval, quartiles, label shares) and design B's beta."""
    return [
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("n", pa.int32()),
        _f("mean_beta", pa.float64()),
        _f("mean_beta_lo", pa.float64()),
        _f("mean_beta_hi", pa.float64()),
        _f("median_beta", pa.float64()),
        _f("beta_q25", pa.float64()),
        _f("beta_q75", pa.float64()),
        _f("share_erased", pa.float64()),
        _f("share_attenuated", pa.float64()),
        _f("share_amplified", pa.float64()),
        _f("label", pa.string()),  # of the median beta
        _f("pooled_beta", pa.float64()),  # design B (null when its design is singular)
        _f("in_head_set", pa.bool_()),
    ]


def _regression_layers(d: int) -> list[pa.Field]:
    """Per analysed layer: R^2 of both designs, the task-aware component's push and lens, "stands out"."""
    return [
        _f("layer", pa.int16()),
        _f("n", pa.int32()),
        _f("n_singular", pa.int32()),
        _f("holds_head_set_head", pa.bool_()),
        _f("best_layer", pa.bool_()),  # the strongest mean push of the partition
        _f("median_r2", pa.float64()),
        _f("r2_q25", pa.float64()),
        _f("r2_q75", pa.float64()),
        _f("pooled_r2", pa.float64()),
        _f("pooled_singular", pa.bool_()),
        _f("push", pa.float64()),
        _f("push_lo", pa.float64()),
        _f("push_hi", pa.float64()),
        _f("answer_top1_share_in_c", pa.float64()),
        _f("answer_top1_share_resid", pa.float64()),  # answer top-1 in the lens of the residual leaving the layer
        _f("median_answer_rank_in_c", pa.float64()),
        _f("mean_cosine_answer", pa.float64()),
        _f("median_subject_rank_before", pa.float64()),
        _f("median_subject_rank_after", pa.float64()),
        _f("mean_dla_subject_heads", pa.float64()),
        _f("mean_dla_subject_scaled", pa.float64()),
    ]


def _argument_swap(d: int) -> list[pa.Field]:
    """Per clean prompt: the head set's outputs at END patched from the twin prompt about X' (same
    template and demonstrations). eligible = X''s answer token differs from the prompt's."""
    return [
        _f("prompt_id", pa.int32()),
        _f("swap_subject", pa.string()),
        _f("swap_object", pa.string()),
        _f("swap_token", pa.int32()),
        _f("answer_token", pa.int32()),
        _f("top1_before", pa.int32()),
        _f("top1_after", pa.int32()),
        _f("eligible", pa.bool_()),
        _f("success", pa.bool_()),  # top-1 after the swap is X''s object
        _f("stayed", pa.bool_()),  # top-1 after the swap is still the original answer
    ]


def _function_application(d: int) -> list[pa.Field]:
    """One row per partition: the head set used, the layer where c pushes the answer hardest, the causal
    checks with bootstrap 95% intervals, and the two shares the paper's claims are judged by."""
    return [
        _f("head_set", pa.list_(pa.string())),
        _f("layers", pa.list_(pa.int16())),  # analysed: the first head-set layer to the last layer
        _f("n_prompts", pa.int32()),
        _f("best_layer", pa.int16()),
        _f("answer_appears_layer", pa.int16()),  # first layer where the answer is top-1 in c's lens for >= half the prompts
        _f("residual_top1_layer", pa.int16()),  # same in the lens of the whole residual leaving the layer
        _f("push", pa.float64()),
        _f("push_lo", pa.float64()),
        _f("push_hi", pa.float64()),
        _f("push_n", pa.int32()),
        _f("removal_n", pa.int32()),
        _f("removal_p_before", pa.float64()),
        _f("removal_p_after", pa.float64()),
        _f("removal_delta_p", pa.float64()),
        _f("removal_delta_p_lo", pa.float64()),
        _f("removal_delta_p_hi", pa.float64()),
        _f("swap_n", pa.int32()),
        _f("swap_success", pa.float64()),
        _f("swap_success_lo", pa.float64()),
        _f("swap_success_hi", pa.float64()),
        _f("swap_stayed", pa.float64()),
        _f("swap_stayed_lo", pa.float64()),
        _f("swap_stayed_hi", pa.float64()),
        _f("share_head_layers_r2_ge_half", pa.float64()),
        _f("share_set_heads_amplified", pa.float64()),
        _f("plots", pa.list_(pa.string())),
        _f("seconds", pa.float64()),
        _f("skipped_reason", pa.string()),
    ]


_BUILDERS = {
    "prompts": _prompts,
    "logits": _logits,
    "heads": _heads,
    "layers": _layers,
    "resid_end": _resid_end,
    "dla": _dla,
    "ledger": _ledger,
    "unembed": _unembed,
    "model_info": _model_info,
    "head_prompts": _head_prompts,
    "mlp_patching": _mlp_patching,
    "head_summary": _head_summary,
    "head_sets": _head_sets,
    "lens": _lens,
    "final_components": _final_components,
    "final_layer_summary": _final_layer_summary,
    "mitigation": _mitigation,
    "mitigation_curve": _mitigation_curve,
    "mitigation_prompts": _mitigation_prompts,
    "regression_betas": _regression_betas,
    "regression_prompts": _regression_prompts,
    "regression_heads": _regression_heads,
    "regression_layers": _regression_layers,
    "argument_swap": _argument_swap,
    "function_application": _function_application,
}


def schema(table: str, d_model: int) -> pa.Schema:
    """Arrow schema of ``table`` for a model of width ``d_model``."""
    try:
        build = _BUILDERS[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(_BUILDERS)}") from None
    vector_type(d_model)  # validates d
    return pa.schema(build(int(d_model)))
