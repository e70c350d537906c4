"""Tables of the mlp stage (docs/METHOD.md §5-6): design A/B regressions of the MLP on the head layer's
heads, the task-aware component c, and the causal checks. Partition columns come from the store."""

from __future__ import annotations

import pyarrow as pa

from factrecall.tasks.stage_api import Rows

from .columns import ci, encode_rows, list_of
from .columns import field as _f

SCHEMAS: dict[str, pa.Schema] = {
    # Design A (METHOD.md §5, secondary) per clean prompt, analysed layer and head: m = sum beta o + b + e at END.
    "regression_betas": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("beta", pa.float64()),  # NaN when the prompt's design is singular
        _f("label", pa.string()),  # reversed (beta < -1.5) | erased (<= -0.5) | attenuated | unchanged | amplified | ""
        _f("in_head_set", pa.bool_()),
    ]),
    # Per clean prompt and analysed layer: design A's fit, the subject's standing, and the task-aware component c
    # (design B's betas from the other half of the judged prompts: out of fold, METHOD.md §6) through the logit lens.
    "regression_prompts": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("correct", pa.bool_()),  # a judged prompt (the model answers it correctly)
        _f("split", pa.string()),  # "a" | "b": the judged prompt's half (c comes from the other's fit); null otherwise
        _f("intercept", pa.float64()),
        _f("r2", pa.float64()),
        _f("rank", pa.int32()),  # rank of the [d, H+1] design
        _f("singular", pa.bool_()),
        _f("subject_rank_before", pa.int32()),
        _f("subject_rank_after", pa.int32()),
        _f("dla_subject_heads", pa.float64()),  # DLA onto the subject of sum_h o
        _f("dla_subject_scaled", pa.float64()),  # DLA onto the subject of sum_h (1 + beta_B) o
        _f("c_answer_rank", pa.float64()),  # rank of the answer in c's logit lens (NaN: no design B fit)
        _f("c_dla_answer", pa.float64()),
        _f("c_push", pa.float64()),  # DLA(c, answer) - mean DLA(c, other objects of the relation)
        _f("c_push_null", pa.float64()),  # the same c's push toward the other prompts' answers (mean)
        _f("mlp_push", pa.float64()),  # the push of the MLP output m itself
        _f("mlp_push_null", pa.float64()),
        _f("c_cosine_answer", pa.float64()),  # cosine(c, W_U[:, answer])
        _f("answer_rank_after", pa.int32()),  # rank of the answer in the lens of the residual leaving the layer
    ]),
    # Per analysed layer and head: design A's beta distribution over prompts, design B's beta (primary).
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
        _f("share_reversed", pa.float64()),
        _f("share_erased", pa.float64()),
        _f("share_attenuated", pa.float64()),
        _f("share_amplified", pa.float64()),
        _f("label", pa.string()),  # of design A's median beta
        _f("pooled_beta", pa.float64()),  # design B on the judged prompts (null when singular)
        _f("pooled_beta_se", pa.float64()),  # bootstrap standard error over the judged prompts
        _f("pooled_beta_lo", pa.float64()),  # percentile 95% interval
        _f("pooled_beta_hi", pa.float64()),
        _f("pooled_label", pa.string()),  # label of design B's beta
        _f("pooled_beta_all", pa.float64()),  # design B on every prompt
        _f("in_head_set", pa.bool_()),
    ]),
    "regression_layers": pa.schema([
        _f("layer", pa.int16()),
        _f("n", pa.int32()),
        _f("n_singular", pa.int32()),
        _f("n_judged", pa.int32()),
        _f("holds_head_set_head", pa.bool_()),
        _f("best_layer", pa.bool_()),  # half A's choice: the strongest push of its own fit over its own prompts
        _f("best_layer_b", pa.bool_()),  # half B's choice
        _f("median_r2", pa.float64()),  # design A
        _f("r2_q25", pa.float64()),
        _f("r2_q75", pa.float64()),
        _f("pooled_r2", pa.float64()),  # design B on the judged prompts, with its bootstrap interval
        _f("pooled_r2_lo", pa.float64()),
        _f("pooled_r2_hi", pa.float64()),
        _f("pooled_r2_null", pa.float64()),  # mean R^2 with the prompts shuffled (the null)
        _f("pooled_r2_null_q95", pa.float64()),
        _f("pooled_singular", pa.bool_()),
        _f("pooled_r2_all", pa.float64()),  # design B on every prompt
        *ci("push"),  # the out-of-fold c's push minus its null, judged prompts
        *ci("push_in_a"),  # half A's own fit on its own prompts (chooses its layer)
        *ci("push_in_b"),
        *ci("push_mlp"),  # the MLP output's push minus its null
        _f("answer_top1_share_in_c", pa.float64()),
        _f("answer_top1_share_resid", pa.float64()),  # answer top-1 in the lens of the residual leaving the layer
        _f("median_answer_rank_in_c", pa.float64()),
        _f("mean_cosine_answer", pa.float64()),
        _f("median_subject_rank_before", pa.float64()),
        _f("median_subject_rank_after", pa.float64()),
        _f("mean_dla_subject_heads", pa.float64()),
        _f("mean_dla_subject_scaled", pa.float64()),
    ]),
    "argument_swap": pa.schema([  # per clean prompt: the head set's z at END replaced by the twin run's (METHOD.md §6)
        _f("prompt_id", pa.int32()),
        _f("swap_subject", pa.string()),
        _f("swap_object", pa.string()),
        _f("decision_offset", pa.int32()),  # tokens X's and X''s objects share before they differ (-1: never)
        _f("swap_token", pa.int32()),  # X''s object token at the decision position
        _f("answer_token", pa.int32()),  # X's object token there
        _f("top1_before", pa.int32()),  # top-1 at the decision position (after the shared prefix)
        _f("top1_after", pa.int32()),
        _f("random_heads", list_of(pa.string())),  # the random head set of this prompt's chance swap
        _f("top1_random", pa.int32()),  # top-1 there after swapping the random heads
        _f("first_top1_before", pa.int32()),  # top-1 at END
        _f("first_top1_after", pa.int32()),
        _f("eligible", pa.bool_()),  # the greedy path before is X's object to the decision token; no subject copy
        _f("success", pa.bool_()),  # eligible and the path after the head-set swap is X''s object to it
        _f("chance_success", pa.bool_()),  # eligible and the same after the random swap
        _f("excluded_answer_in_subject", pa.bool_()),  # X's or X''s answer token is one of its subject tokens
        _f("answer_was_top1", pa.bool_()),
        _f("stayed", pa.bool_()),  # the answer was top-1 before and still is after the head-set swap
    ]),
    "function_application": pa.schema([  # one row per partition
        _f("head_set", list_of(pa.string())),
        _f("layers", list_of(pa.int16())),  # analysed: the first head-set layer to the last layer
        _f("n_prompts", pa.int32()),
        _f("n_correct", pa.int32()),  # judged prompts
        _f("best_layer", pa.int16()),  # chosen by half A of the judged prompts (half B's prompts are judged there)
        _f("best_layer_b", pa.int16()),  # chosen by half B (half A's prompts are judged there)
        _f("best_layer_all", pa.int16()),  # the same over every prompt
        _f("answer_appears_layer", pa.int16()),  # first layer where the answer is top-1 in c's lens for >= half
        _f("residual_top1_layer", pa.int16()),  # same in the lens of the whole residual leaving the layer
        _f("pooled_r2", pa.float64()),  # design B R^2, mean over the head-set layers, judged prompts
        _f("pooled_r2_lo", pa.float64()),
        _f("pooled_r2_hi", pa.float64()),
        _f("pooled_r2_null", pa.float64()),  # shuffled-prompt null: mean and 95th percentile
        _f("pooled_r2_null_q95", pa.float64()),
        _f("pooled_r2_n", pa.int32()),
        _f("pooled_r2_all", pa.float64()),  # the same over every prompt (point estimate)
        *ci("push"),  # judged prompts, each at its other half's layer: out-of-fold c's push minus its null
        _f("push_n", pa.int32()),
        _f("push_raw", pa.float64()),  # c's push alone
        _f("push_null", pa.float64()),  # its null alone
        *ci("push_mlp"),  # the MLP output's push minus its null, same prompts and layer
        *ci("push_intercept"),  # design B's shared intercept's push minus its null
        *ci("push_all"),  # the whole analysis over every prompt (its own halves and layers)
        _f("push_all_n", pa.int32()),
        _f("removal_n", pa.int32()),
        _f("removal_p_before", pa.float64()),
        _f("removal_p_after", pa.float64()),
        *ci("removal_delta_p"),
        _f("swap_n", pa.int32()),  # eligible prompts (argument_swap.eligible)
        *ci("swap_success"),  # success rate with its Wilson interval
        *ci("swap_chance"),  # the same swap from random head sets of the same size
        _f("swap_excluded_n", pa.int32()),  # prompts left out: an answer token is a subject token
        _f("swap_undecidable_n", pa.int32()),  # one object's tokens are a prefix of the other's
        _f("swap_stayed_n", pa.int32()),  # prompts whose answer was top-1 before
        *ci("swap_stayed"),
        _f("share_head_layers_r2_ge_half", pa.float64()),  # of head-set layers with design B R^2 >= 0.5
        _f("share_set_heads_amplified", pa.float64()),  # design B labels
        _f("seconds", pa.float64()),
        _f("skipped_reason", pa.string()),
    ]),
}


def encode(part: Rows) -> dict[str, pa.Table]:
    return encode_rows(SCHEMAS, part.tables)
