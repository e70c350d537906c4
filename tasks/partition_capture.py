"""Capture a partition's prompts batch by batch and turn each batch into store tables.

`capture_partition` yields, per batch, `{table: pyarrow.Table}` for the partitioned tables of
`factrecall.storage.schema`. Memory is bounded by the batch size: nothing is accumulated across
batches except the ids of tokens whose unembedding columns are written at the end.
The ledger is checked for every prompt and attributed token; after the last batch, any failure raises
`LedgerError` naming the worst prompt of the partition, before the caller commits anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from factrecall.storage.schema import schema

from .adapters import get_module
from .capture import EndCapture, capture_batch
from .ledger import Ledger, compute_ledger, ledger_rtol, norm_scale, stack_components
from .metrics import summarize_logits
from .models import LoadedModel
from .tokenization import TokenizedPrompt, length_sorted_batches

TOKEN_ROLES = ("answer", "subject", "top1")


class LedgerError(RuntimeError):
    """The decomposition does not reproduce the model's logits: the model is refused."""


@dataclass
class FinalNorm:
    gain: torch.Tensor  # [d] effective gain
    bias: torch.Tensor | None  # [d]
    eps: float
    kind: str


@dataclass
class PartitionStats:
    n_prompts: int = 0
    ledger_max_error: float = 0.0
    worst_prompt: str = ""
    n_broken: int = 0  # (prompt, attributed token) pairs outside the ledger tolerance
    worst_ratio: float = 0.0
    worst_failure: str = ""
    token_ids: set[int] = field(default_factory=set)


def final_norm_of(lm: LoadedModel) -> FinalNorm:
    gain, bias, eps = lm.adapter.norm_parameters(get_module(lm.model, lm.adapter.final_norm, lm.adapter.family))
    return FinalNorm(gain.to(lm.device), None if bias is None else bias.to(lm.device), eps, lm.adapter.norm_kind)


def unembedding(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U as `[vocab, d]` float32, b_U `[vocab]` or None) from the model's output embedding."""
    head = lm.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.detach().float(), None if bias is None else bias.detach().float()


def _vectors(x: torch.Tensor, d: int) -> pa.FixedSizeListArray:
    flat = x.detach().float().cpu().numpy().reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d)


def _col(values, type_=None):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return pa.array(values, type_)


def capture_partition(
    lm: LoadedModel, prompts: Sequence[TokenizedPrompt], batch_size: int, stats: PartitionStats, progress=None
) -> Iterator[dict[str, pa.Table]]:
    """Yield store tables batch by batch; `stats` is updated in place; `progress(n)` after each batch."""
    d = lm.dims.d_model
    norm = final_norm_of(lm)
    w_u, b_u = unembedding(lm)
    for _, batch in length_sorted_batches(prompts, batch_size):
        cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
        yield _batch_tables(lm, batch, cap, norm, w_u, b_u, d, stats)
        if progress is not None:
            progress(len(batch))
    _raise_if_broken(stats)  # after every batch, so the message names the worst prompt of all


def _batch_tables(lm, batch, cap: EndCapture, norm: FinalNorm, w_u, b_u, d, stats: PartitionStats):
    device = cap.logits.device
    n = len(batch)
    answer = torch.tensor([p.answer_token_id for p in batch], device=device)
    subject = torch.tensor([p.subject_token_id for p in batch], device=device)
    summary = summarize_logits(cap.logits, answer)
    top1 = summary.topk_ids[:, 0]
    components = stack_components(cap)
    ledgers: dict[str, Ledger] = {}
    for role, ids in zip(TOKEN_ROLES, (answer, subject, top1)):
        ledgers[role] = compute_ledger(
            cap, components, ids, w_u, b_u, norm.gain, norm.bias, norm.eps, norm.kind, lm.dims.logit_softcap,
            rtol=ledger_rtol(lm.dtype),
        )
    _check_ledger(batch, ledgers, stats)
    stats.n_prompts += n
    for ids in (answer, subject, top1):
        stats.token_ids.update(ids.tolist())

    prompt_id = pa.array([p.prompt.prompt_id for p in batch], pa.int32())
    variant = pa.array([p.prompt.variant for p in batch], pa.string())
    L, H = lm.dims.n_layers, lm.dims.n_heads
    ledger_error = torch.stack([led.error for led in ledgers.values()], 1).max(1).values
    tables = {
        "prompts": _prompts_table(batch, d),
        "logits": pa.Table.from_arrays(
            [
                prompt_id, variant,
                _col(summary.answer_logit, pa.float32()), _col(summary.p_answer, pa.float32()),
                _col(summary.answer_rank.int(), pa.int32()), _col(summary.metric_m, pa.float32()),
                _col(summary.answer_rank == 0, pa.bool_()),
                pa.array(summary.topk_ids.int().cpu().numpy().tolist(), pa.list_(pa.int32())),
                pa.array(summary.topk_logits.cpu().numpy().tolist(), pa.list_(pa.float32())),
                _col(norm_scale(cap.final_resid, norm.kind, norm.eps), pa.float32()),
                _col(ledger_error, pa.float32()),
            ],
            schema=schema("logits", d),
        ),
        "heads": _heads_table(batch, cap, L, H, d),
        "layers": pa.Table.from_arrays(
            [
                pa.array(np.repeat([p.prompt.prompt_id for p in batch], L), pa.int32()),
                pa.array(np.repeat([p.prompt.variant for p in batch], L), pa.string()),
                pa.array(np.tile(np.arange(L), n), pa.int16()),
                _vectors(cap.attn_bias, d), _vectors(cap.mlp_out, d),
                _vectors(cap.resid_pre, d), _vectors(cap.resid_post, d),
            ],
            schema=schema("layers", d),
        ),
        "resid_end": pa.Table.from_arrays(
            [
                prompt_id, variant, _vectors(cap.embed, d),
                _vectors(cap.pos_embed, d) if cap.pos_embed is not None else pa.nulls(n, schema("resid_end", d).field("pos_embed").type),
                _vectors(cap.final_resid, d),
            ],
            schema=schema("resid_end", d),
        ),
        "dla": _dla_table(batch, ledgers, (answer, subject, top1), d),
        "ledger": _ledger_table(batch, ledgers, (answer, subject, top1), d),
    }
    return tables


def _check_ledger(batch: Sequence[TokenizedPrompt], ledgers: dict[str, Ledger], stats: PartitionStats) -> None:
    """Track the largest error and every prompt that breaks the ledger (raised after the last batch)."""
    for role, led in ledgers.items():
        ratio = (led.error / led.tolerance()).cpu()
        worst = int(ratio.argmax())
        err = float(led.error[worst])
        if err > stats.ledger_max_error:
            stats.ledger_max_error = err
            stats.worst_prompt = batch[worst].prompt.text
        stats.n_broken += int((ratio > 1).sum())
        if ratio[worst] > 1 and float(ratio[worst]) > stats.worst_ratio:
            p = batch[worst].prompt
            stats.worst_ratio = float(ratio[worst])
            stats.worst_failure = (
                f"DLA terms sum to {float(led.dla_sum[worst]):.6f} but the model's {role} logit is "
                f"{float(led.model_logit[worst]):.6f} (error {err:.3g} > {led.rtol} * max(1, |logit|)) for "
                f"prompt {p.prompt_id} ({p.variant}) {p.text!r}"
            )


def _raise_if_broken(stats: PartitionStats) -> None:
    if stats.n_broken:
        raise LedgerError(
            f"ledger broken for {stats.n_broken} (prompt, token) pair(s) of {stats.n_prompts} prompts; worst: "
            f"{stats.worst_failure}; the model is refused and nothing is written"
        )


def _prompts_table(batch: Sequence[TokenizedPrompt], d: int) -> pa.Table:
    rows = [
        dict(
            prompt_id=t.prompt.prompt_id, variant=t.prompt.variant, fact_index=t.prompt.fact_index,
            template_index=t.prompt.template_index, subject=t.prompt.subject, object=t.prompt.object,
            query_subject=t.prompt.query_subject, text=t.prompt.text, demo_subjects=list(t.prompt.demo_subjects),
            source_prompt_id=t.prompt.source_prompt_id, n_tokens=len(t.input_ids), end_pos=t.end_pos,
            s_pos=t.s_pos, s_first_pos=t.s_first_pos, subject_token_id=t.subject_token_id,
            answer_token_id=t.answer_token_id, answer_token=t.answer_token,
            object_n_tokens=t.object_n_tokens, bos=t.bos,
        )
        for t in batch
    ]
    return pa.Table.from_pylist(rows, schema=schema("prompts", d))


def _heads_table(batch, cap: EndCapture, L: int, H: int, d: int) -> pa.Table:
    n = len(batch)
    s_pos = torch.tensor([t.s_pos for t in batch], device=cap.attn.device)
    attn_to_s = cap.attn[torch.arange(n, device=cap.attn.device), :, :, s_pos]  # [n, L, H]
    attn = cap.attn.cpu().numpy()  # [n, L, H, T], zero beyond each row's length
    lengths = np.array([len(t.input_ids) for t in batch])
    values = np.concatenate([attn[b, :, :, : lengths[b]].reshape(-1) for b in range(n)])
    offsets = np.concatenate([[0], np.cumsum(np.repeat(lengths, L * H))]).astype(np.int32)
    attn_lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat([t.prompt.prompt_id for t in batch], L * H), pa.int32()),
            pa.array(np.repeat([t.prompt.variant for t in batch], L * H), pa.string()),
            pa.array(np.tile(np.repeat(np.arange(L), H), n), pa.int16()),
            pa.array(np.tile(np.arange(H), n * L), pa.int16()),
            _vectors(cap.head_out, d),
            _col(attn_to_s.reshape(-1), pa.float32()),
            attn_lists,
        ],
        schema=schema("heads", d),
    )


def _dla_table(batch, ledgers: dict[str, Ledger], ids, d: int) -> pa.Table:
    parts = []
    for (role, led), tok in zip(ledgers.items(), ids):
        n, c = led.dla.shape
        parts.append(
            pa.Table.from_arrays(
                [
                    pa.array(np.repeat([t.prompt.prompt_id for t in batch], c), pa.int32()),
                    pa.array(np.repeat([t.prompt.variant for t in batch], c), pa.string()),
                    pa.array([role] * (n * c), pa.string()),
                    pa.array(np.repeat(tok.cpu().numpy(), c), pa.int32()),
                    pa.array([lab.name for lab in led.labels] * n, pa.string()),
                    pa.array([lab.layer for lab in led.labels] * n, pa.int16()),
                    pa.array([lab.head for lab in led.labels] * n, pa.int16()),
                    _col(led.dla.reshape(-1), pa.float32()),
                ],
                schema=schema("dla", d),
            )
        )
    return pa.concat_tables(parts)


def _ledger_table(batch, ledgers: dict[str, Ledger], ids, d: int) -> pa.Table:
    parts = []
    for (role, led), tok in zip(ledgers.items(), ids):
        n = len(batch)
        parts.append(
            pa.Table.from_arrays(
                [
                    pa.array([t.prompt.prompt_id for t in batch], pa.int32()),
                    pa.array([t.prompt.variant for t in batch], pa.string()),
                    pa.array([role] * n, pa.string()),
                    _col(tok.int(), pa.int32()),
                    _col(led.model_logit, pa.float32()),
                    _col(led.dla_sum, pa.float32()),
                    _col(led.error, pa.float32()),
                ],
                schema=schema("ledger", d),
            )
        )
    return pa.concat_tables(parts)


def unembed_table(lm: LoadedModel, token_ids: set[int]) -> pa.Table:
    """The unembedding columns W_U[:, t] (and b_U[t]) of every token a partition used."""
    w_u, b_u = unembedding(lm)
    ids = sorted(token_ids)
    idx = torch.tensor(ids, dtype=torch.long, device=w_u.device)
    d = lm.dims.d_model
    bias = b_u[idx] if b_u is not None else torch.zeros(len(ids))
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int32()),
            pa.array([lm.tokenizer.decode([i]) for i in ids], pa.string()),
            _vectors(w_u[idx], d),
            _col(bias, pa.float32()),
        ],
        schema=schema("unembed", d),
    )


def model_info_table(lm: LoadedModel, source: str) -> pa.Table:
    norm = final_norm_of(lm)
    d = lm.dims.d_model
    bias = norm.bias if norm.bias is not None else torch.zeros(d)
    row = dict(
        model=lm.model_id, family=lm.adapter.family, n_layers=lm.dims.n_layers, n_heads=lm.dims.n_heads,
        d_model=d, d_head=lm.dims.d_head, norm_kind=norm.kind,
        final_norm_gain=norm.gain.cpu().numpy().tolist(), final_norm_bias=bias.cpu().numpy().tolist(),
        vocab_size=int(lm.model.get_output_embeddings().weight.shape[0]), dtype=str(lm.dtype).removeprefix("torch."),
        source=source, file_sha256=lm.file_sha256 or "", bos=bool(getattr(lm.tokenizer, "bos_token_id", None) is not None
                                                                  and lm.tokenizer("x").input_ids[:1] == [lm.tokenizer.bos_token_id]),
        logit_softcap=lm.dims.logit_softcap,
    )
    sch = schema("model_info", d)
    return pa.Table.from_pylist([{k: row.get(k) for k in sch.names}], schema=sch)
