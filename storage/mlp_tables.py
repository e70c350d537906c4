"""Tables of the mlp stage (docs/METHOD.md §5-6): design A/B regressions of the MLP on the head layer's
heads, the task-aware component c, and the causal checks. Partition columns come from the store."""

from __future__ import annotations

import pyarrow as pa

from factrecall.tasks.stage_api import Rows

from .columns import ci, encode_rows, list_of
from .columns import field as _f

SCHEMAS: dict[str, pa.Schema] = {
    # Design A (METHOD.md §5) per clean prompt, analysed layer and head: m = sum beta o + b + e at END.
    "regression_betas": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("beta", pa.float64()),  # NaN when the prompt's design is singular
        _f("label", pa.string()),  # erased (beta <= -0.5) | attenuated | unchanged | amplified (beta > 0) | ""
        _f("in_head_set", pa.bool_()),
    ]),
    # Per clean prompt and analysed layer: design A's fit, "stands out", and the task-aware component c = m -
    # sum beta o (METHOD.md §5-6). Subject ranks are in the logit lens of the residual before / after the MLP
    # (0 = top); DLA uses the final norm frozen at its real scale.
    "regression_prompts": pa.schema([
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
    ]),
    # Per analysed layer and head over prompts: the distribution of design A's beta (mean with a bootstrap 95%
    # interval, quartiles, label shares) and design B's beta.
    "regression_heads": pa.schema([
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
    ]),
    # Per analysed layer: R^2 of both designs, the task-aware component's push and lens, "stands out".
    "regression_layers": pa.schema([
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
    ]),
    # Per clean prompt: the head set's outputs at END patched from the twin prompt about X' (same template and
    # demonstrations), and the same swap from a random set of as many heads (the chance rate).
    "argument_swap": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("swap_subject", pa.string()),
        _f("swap_object", pa.string()),
        _f("swap_token", pa.int32()),
        _f("answer_token", pa.int32()),
        _f("top1_before", pa.int32()),
        _f("top1_after", pa.int32()),
        _f("random_heads", list_of(pa.string())),  # the random head set of this prompt's chance swap
        _f("top1_random", pa.int32()),  # top-1 after swapping the random heads
        _f("eligible", pa.bool_()),  # the answer was top-1 before, X''s object was not (and they differ)
        _f("success", pa.bool_()),  # eligible and X''s object is top-1 after the head-set swap
        _f("chance_success", pa.bool_()),  # eligible and X''s object is top-1 after the random swap
        _f("answer_was_top1", pa.bool_()),
        _f("stayed", pa.bool_()),  # the answer was top-1 before and still is after the head-set swap
    ]),
    # One row per partition: the head set used, the layer where c pushes the answer hardest, the causal checks
    # with bootstrap 95% intervals, and the two shares the paper's claims are judged by.
    "function_application": pa.schema([
        _f("head_set", list_of(pa.string())),
        _f("layers", list_of(pa.int16())),  # analysed: the first head-set layer to the last layer
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
        _f("swap_n", pa.int32()),  # eligible prompts (argument_swap.eligible)
        *ci("swap_success"),
        *ci("swap_chance"),  # the same swap from random head sets of the same size
        _f("swap_stayed_n", pa.int32()),  # prompts whose answer was top-1 before
        *ci("swap_stayed"),
        _f("share_head_layers_r2_ge_half", pa.float64()),
        _f("share_set_heads_amplified", pa.float64()),
        _f("seconds", pa.float64()),
        _f("skipped_reason", pa.string()),
    ]),
}


def encode(part: Rows) -> dict[str, pa.Table]:
    return encode_rows(SCHEMAS, part.tables)
