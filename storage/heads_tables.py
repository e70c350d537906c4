"""Tables of the heads stage (docs/METHOD.md §4) and their encoder.

Effects are path-patching effect% on M = logit(y) - mean vocabulary logit; *_lo/*_hi are bootstrap 95%
intervals over prompts. Partition columns (model, relation, shot, result_id) come from the store.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from factrecall.tasks.heads_stage import HeadsResult

from .columns import field as _f
from .columns import VECTOR, list_of, table_from_columns, vectors

SCHEMAS: dict[str, pa.Schema] = {
    "head_prompts": pa.schema([  # per clean prompt x head at END
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("attn_to_s", pa.float32()),  # attention weight END -> S
        _f("dla_subject", pa.float32()),  # DLA of the head's output onto the subject's first token
        _f("dla_answer", pa.float32()),  # DLA onto the answer token
        _f("subject_rank", pa.int32()),  # rank of the subject token in the logit lens of the output (0 = top)
        _f("m_clean", pa.float32()),  # M = logit(y) - mean vocab logit, clean run
        _f("effect_subject_pct", pa.float32()),  # sender mean over subject-corrupted prompts
        _f("effect_relation_pct", pa.float32()),  # sender = its output with the relation word corrupted (NaN: no twin)
        _f("copy_auc", pa.float32()),  # share of the relation's other subject tokens the own subject beats in the lens
        _f("correct", pa.bool_()),  # the model answers the prompt correctly (top-1): a judged prompt
        _f("answer_in_subject", pa.bool_()),  # the answer token is a subject token: left out of copy statistics
    ]),
    "mlp_patching": pa.schema([
        _f("prompt_id", pa.int32()),
        _f("layer", pa.int16()),
        _f("effect_subject_pct", pa.float32()),
        _f("effect_relation_pct", pa.float32()),
    ]),
    "head_summary": pa.schema([  # per head over the judged prompts (answered correctly; *_all: every prompt)
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("n", pa.int32()),  # judged prompts (the model's answer is correct)
        _f("n_all", pa.int32()),
        _f("mean_attn_to_s", pa.float64()),
        _f("mean_dla_subject", pa.float64()),
        _f("mean_dla_answer", pa.float64()),
        _f("median_subject_rank", pa.float64()),
        _f("pearson_r", pa.float64()),  # attention END->S vs DLA onto the subject, across the copy prompts
        _f("r_lo", pa.float64()),
        _f("r_hi", pa.float64()),
        _f("effect_pct", pa.float64()),  # 100 (mean M_patched - mean M_clean) / mean M_clean
        _f("effect_lo", pa.float64()),
        _f("effect_hi", pa.float64()),
        _f("effect_se", pa.float64()),  # bootstrap standard error of effect_pct
        _f("effect_simul_lo", pa.float64()),  # simultaneous interval over the partition's heads (Bonferroni)
        _f("effect_simul_hi", pa.float64()),
        _f("significant", pa.bool_()),  # effect_simul_hi < 0: the head's effect is significantly negative
        _f("effect_all_pct", pa.float64()),  # effect% over every prompt, with its interval
        _f("effect_all_lo", pa.float64()),
        _f("effect_all_hi", pa.float64()),
        _f("effect_relation_pct", pa.float64()),  # same with relation-word corruption (null if none)
        _f("copy_auc", pa.float64()),  # mean copy AUC over the copy prompts (judged, answer not a subject token)
        _f("copy_auc_lo", pa.float64()),
        _f("copy_auc_hi", pa.float64()),
        _f("copy_n", pa.int32()),
        _f("copy_auc_all", pa.float64()),  # over every prompt whose answer is not a subject token
        _f("subject_top_share", pa.float64()),  # share of judged prompts whose largest attention target is a subject
        # token after position 0 (position 0 is the sink; null: the subject is position 0 alone in every prompt)
        _f("sink_share", pa.float64()),  # share whose largest attention target is position 0
        _f("attention_passes", pa.bool_()),  # the head-set rule's attention filter (median, floor, subject-top share)
        _f("in_head_set", pa.bool_()),
        _f("set_order", pa.int16()),  # 1 = largest negative effect in the set; null outside it
    ]),
    "corrupt_prompts": pa.schema([  # every corrupted prompt the patching used: the senders' inputs
        _f("prompt_id", pa.int32()),  # the clean prompt it corrupts (its source)
        _f("variant", pa.string()),  # "subject_corrupt" (averaged into the sender means) | "relation_corrupt"
        _f("query_subject", pa.string()),
        _f("relation_word", pa.string()),  # "word->replacement" for relation_corrupt
        _f("text", pa.string()),
        _f("input_ids", list_of(pa.int32())),
        _f("answer_token_id", pa.int32()),  # the clean answer: still the target
    ]),
    "sender_means": pa.schema([  # each sender's replacement output at END: the mean over subject_corrupt
        _f("layer", pa.int16()),
        _f("head", pa.int16()),  # null for the MLP
        _f("sender", pa.string()),  # "L{l}.H{h}" (raw head output, before any sandwich norm) | "L{l}.mlp"
        _f("n", pa.int32()),  # prompts averaged
        _f("mean", VECTOR),
    ]),
    "head_sets": pa.schema([  # one row per partition: the task-specific head set and the rule that chose it
        _f("heads", list_of(pa.string())),  # "L{l}.H{h}", in set order (empty: no argument-passing heads)
        _f("n_heads", pa.int32()),
        _f("no_heads_reason", pa.string()),  # why the set is empty (null when it is not)
        _f("n_tested", pa.int32()),  # heads tested (the Bonferroni m)
        _f("n_significant", pa.int32()),  # heads whose effect is significantly below 0
        _f("rule", pa.string()),  # JSON: coverage, attention filter and floor, level, correction, effect definition
        _f("coverage", pa.float64()),
        _f("covered_share", pa.float64()),  # share of the candidates' negative effect the set covers
        _f("covered_share_all", pa.float64()),  # share of all heads' negative effect
        _f("set_effect_pct", pa.float64()),  # sum of the set's head effects (subject corruption)
        _f("set_effect_relation_pct", pa.float64()),  # same under relation-word corruption (null if none)
        _f("n_prompts", pa.int32()),
        _f("n_correct", pa.int32()),  # prompts answered correctly: the head set is chosen on these
        _f("n_copy", pa.int32()),  # of those, whose answer token is not a subject token
        _f("n_answer_in_subject", pa.int32()),
        _f("n_subject_top_decidable", pa.int32()),  # prompts whose subject has a token after position 0
        _f("subject_top_rule", pa.string()),  # "applied", or why the largest-target rule was not (too few of those)
        _f("n_corrupt_subject", pa.int32()),
        _f("n_corrupt_relation", pa.int32()),
        _f("relation_corruption", pa.string()),  # the relation words replaced, and the templates that name none
        _f("seconds_patching", pa.float64()),
        _f("skipped_reason", pa.string()),  # non-null: the analysis was skipped (e.g. fewer than 2 subjects)
    ]),
}


def encode(r: HeadsResult) -> dict[str, pa.Table]:
    if r.skipped_reason is not None:
        return {"head_sets": _set_row({"skipped_reason": r.skipped_reason})}
    L, H, pid = r.n_layers, r.n_heads, r.prompt_ids
    n = len(pid)
    grid = lambda a: np.asarray(a).reshape(-1)  # noqa: E731  [n, L, H] -> rows in (prompt, layer, head) order
    head_prompts = table_from_columns(SCHEMAS["head_prompts"], {
        "prompt_id": np.repeat(pid, L * H), "layer": np.tile(np.repeat(np.arange(L), H), n),
        "head": np.tile(np.arange(H), n * L), "attn_to_s": grid(r.attn).astype(np.float32),
        "dla_subject": grid(r.dla_subject).astype(np.float32), "dla_answer": grid(r.dla_answer).astype(np.float32),
        "subject_rank": grid(r.ranks).astype(np.int32), "m_clean": np.repeat(r.m_clean, L * H).astype(np.float32),
        "effect_subject_pct": grid(r.effect_subject).astype(np.float32),
        "effect_relation_pct": grid(r.effect_relation).astype(np.float32) if r.effect_relation is not None else None,
        "copy_auc": grid(r.copy).astype(np.float32), "correct": np.repeat(r.correct, L * H),
        "answer_in_subject": np.repeat(r.answer_in_subject, L * H),
    }, n * L * H)
    mlp = table_from_columns(SCHEMAS["mlp_patching"], {
        "prompt_id": np.repeat(pid, L), "layer": np.tile(np.arange(L), n),
        "effect_subject_pct": r.mlp_effect_subject.reshape(-1),
        "effect_relation_pct": r.mlp_effect_relation.reshape(-1) if r.mlp_effect_relation is not None else None,
    }, n * L)
    return {"head_prompts": head_prompts, "mlp_patching": mlp, "head_summary": _summary(r),
            "head_sets": _set_row(r.set_row), "corrupt_prompts": _corrupt_prompts(r.corrupted),
            "sender_means": _sender_means(r)}


def _corrupt_prompts(corrupted) -> pa.Table:
    rows = [dict(prompt_id=t.prompt.source_prompt_id, variant=t.prompt.variant, query_subject=t.prompt.query_subject,
                 relation_word=t.prompt.relation_word, text=t.prompt.text, input_ids=list(t.input_ids),
                 answer_token_id=t.answer_token_id) for t in corrupted]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["corrupt_prompts"])


def _sender_means(r: HeadsResult) -> pa.Table:
    heads = r.means.head_raw.detach().float().cpu().numpy()  # [L, H, d]
    mlps = r.means.mlp_out.detach().float().cpu().numpy()  # [L, d]
    L, H, d = heads.shape
    n = sum(t.prompt.variant == "subject_corrupt" for t in r.corrupted)
    return table_from_columns(SCHEMAS["sender_means"], {
        "layer": [l for l in range(L) for _ in range(H + 1)],
        "head": [h if h < H else None for _ in range(L) for h in range(H + 1)],
        "sender": [f"L{l}.H{h}" if h < H else f"L{l}.mlp" for l in range(L) for h in range(H + 1)],
        "n": [n] * (L * (H + 1)),
        "mean": vectors(np.concatenate([heads, mlps[:, None]], 1).reshape(-1, d), d),
    }, L * (H + 1))


def _set_row(values: dict) -> pa.Table:
    sch = SCHEMAS["head_sets"]
    row = {name: values.get(name) for name in sch.names}
    row["heads"] = list(values.get("heads") or [])
    row["n_heads"] = len(row["heads"])
    return pa.Table.from_pylist([row], schema=sch)


def _summary(r: HeadsResult) -> pa.Table:
    L, H, n = r.n_layers, r.n_heads, len(r.prompt_ids)
    (pr, r_lo, r_hi), (effect, lo, hi, se, simul_lo, simul_hi) = r.pearson, r.effect
    c_mean, c_lo, c_hi, c_n = r.copy_summary
    a_eff, a_lo, a_hi = r.effect_all
    order = {lh: i + 1 for i, lh in enumerate(r.head_set.heads)}
    num = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
    judged = r.correct if r.correct.any() else np.ones(n, dtype=bool)
    rows = []
    for l in range(L):
        for h in range(H):
            k = l * H + h
            rows.append(dict(
                layer=l, head=h, n=int(r.correct.sum()), n_all=n, mean_attn_to_s=float(r.attn[judged, l, h].mean()),
                mean_dla_subject=float(r.dla_subject[judged, l, h].mean()),
                mean_dla_answer=float(r.dla_answer[judged, l, h].mean()),
                median_subject_rank=float(np.median(r.ranks[judged, l, h])),
                pearson_r=num(pr[k]), r_lo=num(r_lo[k]), r_hi=num(r_hi[k]),
                effect_pct=num(effect[k]), effect_lo=num(lo[k]), effect_hi=num(hi[k]),
                effect_se=num(se[k]), effect_simul_lo=num(simul_lo[k]), effect_simul_hi=num(simul_hi[k]),
                significant=bool(r.head_set.significant[l, h]),
                effect_all_pct=float(a_eff[k]), effect_all_lo=float(a_lo[k]), effect_all_hi=float(a_hi[k]),
                effect_relation_pct=num(r.effect_relation_pct[k]) if r.effect_relation_pct is not None else None,
                copy_auc=num(c_mean[k]), copy_auc_lo=num(c_lo[k]), copy_auc_hi=num(c_hi[k]), copy_n=int(c_n),
                copy_auc_all=num(r.copy_all[k]), subject_top_share=num(r.subject_top[k]),
                sink_share=float(r.sink_top[k]),
                attention_passes=bool(r.head_set.above_median[l, h]),
                in_head_set=(l, h) in order, set_order=order.get((l, h)),
            ))
    return pa.Table.from_pylist(rows, schema=SCHEMAS["head_summary"])
