"""Tables of the capture stage and their encoders (docs/METHOD.md §2, §3, §8).

Conventions: ``variant`` names the prompt variant ("clean" for the unmodified prompt); END is the last
prompt token; positions are 0-based token indices; components in ``dla`` are named "embed",
"pos_embed", "L{l}.H{h}", "L{l}.attn_bias", "L{l}.mlp", "final_norm_bias", "unembed_bias". Vectors are
d_model float32 values at END. Partition columns (model, relation, shot, result_id) come from the store.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from factrecall.tasks.capture_stage import CaptureBatch, CaptureModel

from .columns import VECTOR, field, list_of, table_from_columns, vectors

_f = field


def _key() -> list[pa.Field]:
    return [_f("prompt_id", pa.int32()), _f("variant", pa.string())]


SCHEMAS: dict[str, pa.Schema] = {
    "prompts": pa.schema([
        *_key(),
        _f("fact_index", pa.int32()),
        _f("template_index", pa.int32()),
        _f("subject", pa.string()),
        _f("object", pa.string()),
        _f("query_subject", pa.string()),
        _f("text", pa.string()),
        _f("demo_subjects", list_of(pa.string())),
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
    ]),
    "logits": pa.schema([
        *_key(),
        _f("answer_logit", pa.float32()),
        _f("p_answer", pa.float32()),
        _f("answer_rank", pa.int32()),  # 0 = top-1
        _f("metric_m", pa.float32()),  # logit(y) - mean over vocab of logits
        _f("top1", pa.bool_()),
        _f("topk_ids", list_of(pa.int32())),
        _f("topk_logits", list_of(pa.float32())),
        _f("final_norm_scale", pa.float32()),  # sigma_f of the residual entering the final norm at END
        _f("ledger_error", pa.float32()),  # max |sum DLA - real logit| over attributed tokens
    ]),
    "heads": pa.schema([
        *_key(),
        _f("layer", pa.int16()),
        _f("head", pa.int16()),
        _f("output", VECTOR),  # the head's contribution to the residual at END
        _f("attn_to_s", pa.float32()),
        _f("attn", list_of(pa.float32())),  # attention weights END -> every position
    ]),
    "layers": pa.schema([
        *_key(),
        _f("layer", pa.int16()),
        _f("attn_bias", VECTOR),
        _f("mlp_out", VECTOR),
        _f("resid_pre", VECTOR),
        _f("resid_post", VECTOR),
    ]),
    "resid_end": pa.schema([
        *_key(),
        _f("embed", VECTOR),
        _f("pos_embed", VECTOR),  # null for models without learned positions
        _f("final_resid", VECTOR),
    ]),
    "dla": pa.schema([
        *_key(),
        _f("token_role", pa.string()),  # "answer" | "subject" | "top1"
        _f("token_id", pa.int32()),
        _f("component", pa.string()),
        _f("layer", pa.int16()),  # null for non-layer components
        _f("head", pa.int16()),  # null for non-head components
        _f("value", pa.float32()),
    ]),
    "ledger": pa.schema([
        *_key(),
        _f("token_role", pa.string()),
        _f("token_id", pa.int32()),
        _f("model_logit", pa.float32()),
        _f("dla_sum", pa.float32()),
        _f("error", pa.float32()),
    ]),
    "unembed": pa.schema([
        _f("token_id", pa.int32()),
        _f("token", pa.string()),
        _f("w_u", VECTOR),  # column W_U[:, token]
        _f("b_u", pa.float32()),  # 0 when the model has no unembedding bias
    ]),
    "model_info": pa.schema([  # one row per capture result: the model as it was read
        _f("family", pa.string()),
        _f("n_layers", pa.int32()),
        _f("n_heads", pa.int32()),
        _f("d_model", pa.int32()),
        _f("d_head", pa.int32()),
        _f("norm_kind", pa.string()),  # "layernorm" | "rmsnorm"
        _f("final_norm_gain", VECTOR),  # effective gain (1 + w for Gemma)
        _f("final_norm_bias", VECTOR),  # zeros for RMSNorm
        _f("vocab_size", pa.int32()),
        _f("dtype", pa.string()),
        _f("source", pa.string()),
        _f("file_sha256", pa.string()),
        _f("bos", pa.bool_()),
        _f("logit_softcap", pa.float32()),  # null when the model has no soft-capping
    ]),
}


def encode(part: CaptureBatch | CaptureModel) -> dict[str, pa.Table]:
    if isinstance(part, CaptureModel):
        d = part.w_u.shape[1]
        n = len(part.token_ids)
        info = dict(part.info)
        for k in ("final_norm_gain", "final_norm_bias"):
            info[k] = vectors(info[k][None], d)
        return {
            "unembed": table_from_columns(SCHEMAS["unembed"], {
                "token_id": part.token_ids, "token": part.tokens, "w_u": vectors(part.w_u, d),
                "b_u": part.b_u.float().cpu().numpy()}, n),
            "model_info": table_from_columns(SCHEMAS["model_info"],
                                             {k: v if isinstance(v, pa.Array) else [v] for k, v in info.items()}, 1),
        }
    return _batch_tables(part)


def _batch_tables(b: CaptureBatch) -> dict[str, pa.Table]:
    batch, cap, s, d = b.prompts, b.cap, b.summary, b.d_model
    n, L = len(batch), b.n_layers
    pid = np.array([p.prompt.prompt_id for p in batch], dtype=np.int32)
    variant = [p.prompt.variant for p in batch]
    ledger_error = torch.stack([led.error for led in b.ledgers.values()], 1).max(1).values
    rep = lambda k: {"prompt_id": np.repeat(pid, k), "variant": np.repeat(variant, k)}  # noqa: E731
    return {
        "prompts": _prompts_table(batch),
        "logits": table_from_columns(SCHEMAS["logits"], {
            **rep(1), "answer_logit": s.answer_logit, "p_answer": s.p_answer, "answer_rank": s.answer_rank.int(),
            "metric_m": s.metric_m, "top1": (s.answer_rank == 0),
            "topk_ids": s.topk_ids.int().cpu().numpy().tolist(), "topk_logits": s.topk_logits.cpu().numpy().tolist(),
            "final_norm_scale": b.final_norm_scale, "ledger_error": ledger_error}, n),
        "heads": _heads_table(b),
        "layers": table_from_columns(SCHEMAS["layers"], {
            **rep(L), "layer": np.tile(np.arange(L), n), "attn_bias": vectors(cap.attn_bias, d),
            "mlp_out": vectors(cap.mlp_out, d), "resid_pre": vectors(cap.resid_pre, d),
            "resid_post": vectors(cap.resid_post, d)}, n * L),
        "resid_end": table_from_columns(SCHEMAS["resid_end"], {
            **rep(1), "embed": vectors(cap.embed, d),
            "pos_embed": vectors(cap.pos_embed, d) if cap.pos_embed is not None else None,
            "final_resid": vectors(cap.final_resid, d)}, n),
        "dla": pa.concat_tables([_dla_rows(batch, role, led, b.token_ids[role]) for role, led in b.ledgers.items()]),
        "ledger": pa.concat_tables([table_from_columns(SCHEMAS["ledger"], {
            **rep(1), "token_role": [role] * n, "token_id": b.token_ids[role].int(), "model_logit": led.model_logit,
            "dla_sum": led.dla_sum, "error": led.error}, n) for role, led in b.ledgers.items()]),
    }


def _prompts_table(batch) -> pa.Table:
    rows = [dict(
        prompt_id=t.prompt.prompt_id, variant=t.prompt.variant, fact_index=t.prompt.fact_index,
        template_index=t.prompt.template_index, subject=t.prompt.subject, object=t.prompt.object,
        query_subject=t.prompt.query_subject, text=t.prompt.text, demo_subjects=list(t.prompt.demo_subjects),
        source_prompt_id=t.prompt.source_prompt_id, n_tokens=len(t.input_ids), end_pos=t.end_pos,
        s_pos=t.s_pos, s_first_pos=t.s_first_pos, subject_token_id=t.subject_token_id,
        answer_token_id=t.answer_token_id, answer_token=t.answer_token,
        object_n_tokens=t.object_n_tokens, bos=t.bos) for t in batch]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["prompts"])


def _heads_table(b: CaptureBatch) -> pa.Table:
    batch, cap, L, H = b.prompts, b.cap, b.n_layers, b.n_heads
    n = len(batch)
    s_pos = torch.tensor([t.s_pos for t in batch], device=cap.attn.device)
    attn_to_s = cap.attn[torch.arange(n, device=cap.attn.device), :, :, s_pos]  # [n, L, H]
    attn = cap.attn.cpu().numpy()  # [n, L, H, T], zero beyond each row's length
    lengths = np.array([len(t.input_ids) for t in batch])
    values = np.concatenate([attn[i, :, :, : lengths[i]].reshape(-1) for i in range(n)])
    offsets = np.concatenate([[0], np.cumsum(np.repeat(lengths, L * H))]).astype(np.int32)
    attn_lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()),
                                          type=list_of(pa.float32()))
    return table_from_columns(SCHEMAS["heads"], {
        "prompt_id": np.repeat([t.prompt.prompt_id for t in batch], L * H),
        "variant": np.repeat([t.prompt.variant for t in batch], L * H),
        "layer": np.tile(np.repeat(np.arange(L), H), n), "head": np.tile(np.arange(H), n * L),
        "output": vectors(cap.head_out, b.d_model), "attn_to_s": attn_to_s.reshape(-1), "attn": attn_lists,
    }, n * L * H)


def _dla_rows(batch, role: str, led, tok: torch.Tensor) -> pa.Table:
    n, c = led.dla.shape
    return table_from_columns(SCHEMAS["dla"], {
        "prompt_id": np.repeat([t.prompt.prompt_id for t in batch], c),
        "variant": np.repeat([t.prompt.variant for t in batch], c),
        "token_role": [role] * (n * c), "token_id": np.repeat(tok.cpu().numpy(), c),
        "component": [lab.name for lab in led.labels] * n, "layer": [lab.layer for lab in led.labels] * n,
        "head": [lab.head for lab in led.labels] * n, "value": led.dla.reshape(-1),
    }, n * c)

