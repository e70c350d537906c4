"""Tables of the final_layer stage (docs/METHOD.md §7): logit lens across depth, last-layer component
DLA, the verdict, and the mitigation chosen on a calibration half. Partition columns come from the store."""

from __future__ import annotations

import pyarrow as pa

from factrecall.tasks.stage_api import Rows

from .columns import ci, encode_rows, list_of
from .columns import field as _f

SCHEMAS: dict[str, pa.Schema] = {
    # Logit lens at END per clean prompt and depth (METHOD.md §7). layer -1 = the embeddings (residual
    # entering block 0), layer l = the residual leaving block l; the last layer equals the model's logits. The
    # competitor is the highest-logit token other than the answer entering the last layer.
    "lens": pa.schema([
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
    ]),
    # DLA of each last-layer component (heads "L{l}.H{h}", "L{l}.attn_bias", "L{l}.mlp") at END.
    "final_components": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("split", pa.string()),  # "calibration" | "held_out" (the mitigation's seeded split)
        _f("component", pa.string()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),  # null for b_O and the MLP
        _f("answer_token", pa.int32()),
        _f("competitor_token", pa.int32()),
        _f("dla_answer", pa.float32()),
        _f("dla_competitor", pa.float32()),
    ]),
    # One row per partition: what the last layer does to the answer (deltas = after - before the last layer,
    # i.e. lens at the last layer minus lens at the one below; bootstrap 95% intervals over prompts).
    "final_layer_summary": pa.schema([
        _f("n", pa.int32()),
        _f("layer", pa.int16()),  # the last layer's index
        _f("p_before", pa.float64()),
        _f("p_after", pa.float64()),
        *ci("delta_p"),
        *ci("delta_logit"),
        *ci("share_dropped"),  # share of prompts whose p(answer) drops across the last layer
        *ci("delta_p_competitor"),
        *ci("delta_logit_competitor"),
        _f("entropy_before", pa.float64()),
        _f("entropy_after", pa.float64()),
        *ci("delta_entropy"),
        _f("suppressors", list_of(pa.string())),  # components whose DLA onto the answer is significantly negative
        _f("n_components_tested", pa.int32()),  # last-layer components tested (the Bonferroni m)
        _f("suppression_dla", pa.float64()),  # sum of the suppressors' mean DLA onto the answer
        _f("claim_holds", pa.bool_()),  # delta_p_hi < 0: the last layer lowers p(answer) (the paper's claim)
        _f("verdict", pa.string()),  # "suppresses" | "raises" | "inconclusive"
        _f("seconds", pa.float64()),
    ]),
    # One row per mitigation variant: components and alpha chosen on the calibration half, effects on the
    # held-out half (after - before, paired, bootstrap 95% intervals), and the cost on controls.
    "mitigation": pa.schema([
        _f("variant", pa.string()),  # "heads" | "mlp_answer_oracle" | "mlp_top1"
        _f("choice", pa.string()),  # "unconstrained" | "cost_bounded" (alpha whose text cost is within the bound)
        _f("oracle", pa.bool_()),  # needs the answer label: not deployable, not an upper bound of the others
        _f("components", list_of(pa.string())),
        _f("alpha", pa.float64()),
        _f("split_seed", pa.int64()),
        _f("calibration_share", pa.float64()),
        _f("text_cost_bound", pa.float64()),  # nats per token on the calibration passages (cost_bounded rows)
        _f("n_calibration", pa.int32()),
        _f("n_held_out", pa.int32()),
        _f("calibration_delta_logp", pa.float64()),
        _f("p_before", pa.float64()),
        _f("p_after", pa.float64()),
        *ci("delta_p"),
        _f("acc_before", pa.float64()),
        _f("acc_after", pa.float64()),
        *ci("delta_acc"),
        _f("logp_before", pa.float64()),
        _f("logp_after", pa.float64()),
        *ci("delta_logp"),
        _f("control_relations", list_of(pa.string())),
        _f("n_control", pa.int32()),
        *ci("control_delta_logp"),
        *ci("control_delta_acc"),
        _f("n_text_tokens", pa.int32()),  # next tokens of the held-out text passages
        _f("calibration_text_delta_logp", pa.float64()),  # mean change of log p per token, calibration passages
        *ci("text_delta_logp"),  # the same on the held-out passages (the reported cost); null for the oracle
        _f("note", pa.string()),
    ]),
    # Every alpha of the grid per variant and split (the choice is made on "calibration").
    "mitigation_curve": pa.schema([
        _f("variant", pa.string()),
        _f("alpha", pa.float64()),
        _f("split", pa.string()),
        _f("n", pa.int32()),
        _f("mean_p", pa.float64()),
        _f("mean_logp", pa.float64()),
        _f("accuracy", pa.float64()),
        _f("text_delta_logp", pa.float64()),  # mean change of log p per token on this split's text passages
    ]),
    # Per prompt and variant at the chosen alpha.
    "mitigation_prompts": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("split", pa.string()),
        _f("variant", pa.string()),
        _f("choice", pa.string()),
        _f("alpha", pa.float64()),
        _f("p_before", pa.float32()),
        _f("p_after", pa.float32()),
        _f("logp_before", pa.float32()),
        _f("logp_after", pa.float32()),
        _f("correct_before", pa.bool_()),
        _f("correct_after", pa.bool_()),
    ]),
}


def encode(part: Rows) -> dict[str, pa.Table]:
    return encode_rows(SCHEMAS, part.tables)
