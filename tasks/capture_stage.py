"""The capture stage: one forward pass per batch records every head's and MLP's contribution at END,
checks the ledger (docs/METHOD.md §2) and hands the batch to the store's encoders.

``compute`` yields one ``CaptureBatch`` per batch (memory is bounded by the batch size) and then one
``CaptureModel`` (the unembedding columns of every token used, and the model's readout). The ledger is
checked for every prompt and attributed token; after the last batch, any failure raises ``LedgerError``
naming the worst prompt of the partition, before the runner commits anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .capture import EndCapture, capture_batch
from .ledger import Ledger, compute_ledger, ledger_rtol, ledger_scales_with_prompt, norm_scale, stack_components
from .metrics import LogitSummary, summarize_logits
from .prompts import VARIANTS, build_prompts
from .readout import FinalNorm, final_norm_of, unembedding
from .stage_api import StageConfig, StageInput, StageOutput, option
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts

__all__ = ["CaptureBatch", "CaptureConfig", "CaptureModel", "LedgerError", "TOKEN_ROLES", "capture_prompts", "compute", "model_info"]

TOKEN_ROLES = ("answer", "subject", "top1")


class LedgerError(RuntimeError):
    """The decomposition does not reproduce the model's logits: the model is refused."""


@dataclass(frozen=True)
class CaptureConfig(StageConfig):
    variants: tuple[str, ...] = option(("clean",), f"Prompt variants to capture: {', '.join(VARIANTS)}.")

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or "clean" not in self.variants:
            raise ValueError(f"variants must include 'clean' and come from {', '.join(VARIANTS)}; got {self.variants}")


def extra_inputs(config: CaptureConfig) -> dict | None:
    """Hashed inputs beyond the settings: a capture of relation-corrupted prompts depends on the rule that picks
    the relation word (version 2: a word per template; 3: the template's noun phrase, docs/METHOD.md §1); a capture
    without them does not, so its identity is unchanged."""
    return {"relation_word_rule": 3} if "relation_corrupt" in config.variants else None


@dataclass
class CaptureBatch:
    """One batch: prompts, the END capture, the logit summary, and the ledgers of the three roles."""

    prompts: list[TokenizedPrompt]
    cap: EndCapture
    summary: LogitSummary
    ledgers: dict[str, Ledger]  # role -> ledger, roles in TOKEN_ROLES order
    token_ids: dict[str, torch.Tensor]  # role -> [batch] token ids
    final_norm_scale: torch.Tensor  # [batch]
    n_layers: int
    n_heads: int
    d_model: int


@dataclass
class CaptureModel:
    """After the last batch: unembedding columns of every token used and the model's readout."""

    token_ids: list[int]
    tokens: list[str]
    w_u: torch.Tensor  # [n_tokens, d]
    b_u: torch.Tensor  # [n_tokens]
    info: dict  # model_info row


@dataclass
class _Stats:
    n_prompts: int = 0
    ledger_max_error: float = 0.0
    n_broken: int = 0  # (prompt, attributed token) pairs outside the ledger tolerance
    worst_ratio: float = 0.0
    worst_failure: str = ""
    token_ids: set[int] = field(default_factory=set)


def compute(inp: StageInput) -> Iterator[CaptureBatch | CaptureModel]:
    config = inp.config
    prompts = build_prompts(inp.relation, inp.shot, config.seed, variants=config.variants,
                            max_prompts=config.max_prompts)
    tokenized = tokenize_prompts(inp.lm.tokenizer, prompts, inp.lm.max_length)
    output = yield from capture_prompts(inp.lm, tokenized, config.batch_size, inp.progress)
    output.summary["variants"] = list(config.variants)
    return output


def capture_prompts(lm, tokenized: list[TokenizedPrompt], batch_size: int, progress=lambda **kw: None):
    """Capture ``tokenized`` batch by batch: yields ``CaptureBatch`` parts, then one ``CaptureModel``;
    returns the ``StageOutput``. Raises ``LedgerError`` after the last batch if any prompt broke the ledger."""
    progress(total=len(tokenized))
    norm = final_norm_of(lm)
    w_u, b_u = unembedding(lm)
    stats = _Stats()
    for _, batch in length_sorted_batches(tokenized, batch_size):
        cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
        yield _batch(lm, batch, cap, norm, w_u, b_u, stats)
        progress(advance=len(batch))
    if stats.n_broken:  # after every batch, so the message names the worst prompt of all
        raise LedgerError(
            f"ledger broken for {stats.n_broken} (prompt, token) pair(s) of {stats.n_prompts} prompts; worst: "
            f"{stats.worst_failure}; the model is refused and nothing is written")
    ids = sorted(stats.token_ids)
    idx = torch.tensor(ids, dtype=torch.long, device=w_u.device)
    yield CaptureModel(ids, [lm.tokenizer.decode([i]) for i in ids], w_u[idx],
                       b_u[idx] if b_u is not None else torch.zeros(len(ids)), model_info(lm, norm))
    return StageOutput({"n_prompts": stats.n_prompts, "ledger_max_error": stats.ledger_max_error})


def _batch(lm, batch, cap: EndCapture, norm: FinalNorm, w_u, b_u, stats: _Stats) -> CaptureBatch:
    device = cap.logits.device
    answer = torch.tensor([p.answer_token_id for p in batch], device=device)
    subject = torch.tensor([p.subject_token_id for p in batch], device=device)
    summary = summarize_logits(cap.logits, answer)
    ids = {"answer": answer, "subject": subject, "top1": summary.topk_ids[:, 0]}
    components = stack_components(cap)
    scale = summary.topk_logits[:, 0].abs() if ledger_scales_with_prompt(lm.dtype) else None  # once per batch
    ledgers = {role: compute_ledger(cap, components, ids[role], w_u, b_u, norm.gain, norm.bias, norm.eps, norm.kind,
                                    lm.dims.logit_softcap, rtol=ledger_rtol(lm.dtype), scale=scale)
               for role in TOKEN_ROLES}
    _check_ledger(batch, ledgers, stats)
    stats.n_prompts += len(batch)
    for t in ids.values():
        stats.token_ids.update(t.tolist())
    return CaptureBatch(batch, cap, summary, ledgers, ids, norm_scale(cap.final_resid, norm.kind, norm.eps),
                        lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model)


def _check_ledger(batch: list[TokenizedPrompt], ledgers: dict[str, Ledger], stats: _Stats) -> None:
    """Track the largest error and every prompt that breaks the ledger (raised after the last batch)."""
    for role, led in ledgers.items():
        ratio = (led.error / led.tolerance()).cpu()
        worst = int(ratio.argmax())
        err = float(led.error[worst])
        stats.ledger_max_error = max(stats.ledger_max_error, err)
        stats.n_broken += int((ratio > 1).sum())
        if ratio[worst] > 1 and float(ratio[worst]) > stats.worst_ratio:
            p = batch[worst].prompt
            stats.worst_ratio = float(ratio[worst])
            stats.worst_failure = (
                f"DLA terms sum to {float(led.dla_sum[worst]):.6f} but the model's {role} logit is "
                f"{float(led.model_logit[worst]):.6f} (error {err:.3g} > {led.bound_text(worst)}) for "
                f"prompt {p.prompt_id} ({p.variant}) {p.text!r}")


def model_info(lm, norm: FinalNorm | None = None) -> dict:
    """The model_info row: sizes, final norm (kind, effective gain, bias), vocabulary, source, dtype."""
    norm = norm or final_norm_of(lm)
    d = lm.dims.d_model
    bias = norm.bias if norm.bias is not None else torch.zeros(d)
    tok = lm.tokenizer
    bos = bool(getattr(tok, "bos_token_id", None) is not None and tok("x").input_ids[:1] == [tok.bos_token_id])
    return dict(family=lm.adapter.family, n_layers=lm.dims.n_layers, n_heads=lm.dims.n_heads, d_model=d,
                d_head=lm.dims.d_head, norm_kind=norm.kind, final_norm_gain=norm.gain.float().cpu().numpy(),
                final_norm_bias=bias.float().cpu().numpy(),
                vocab_size=int(lm.model.get_output_embeddings().weight.shape[0]),
                dtype=str(lm.dtype).removeprefix("torch."), source=lm.source, file_sha256=lm.file_sha256 or "",
                bos=bos, logit_softcap=lm.dims.logit_softcap)
