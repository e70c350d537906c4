"""Step 1 of the mechanism for one (model, relation, shot): the argument-passing heads (docs/METHOD.md §4).

Per-prompt head statistics come from the capture (the upstream result the runner hands in); path
patching needs the model (corrupted-prompt means and END-only re-runs, see ``tasks.path_patching``).
``compute`` yields one ``HeadsResult``, which ``storage.heads_tables`` encodes as ``head_prompts``,
``mlp_patching``, ``head_summary`` and ``head_sets``, and returns the plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import polars as pl
import torch

from . import plots
from .capture import capture_batch
from .head_stats import (
    HeadSet,
    HeadSetRule,
    bootstrap_pearson_ci,
    bootstrap_ratio_effect,
    logit_lens_rank,
    pearson,
    ratio_effect,
    select_head_set,
    simultaneous_interval,
)
from .models import LoadedModel
from .path_patching import EndRunner, PatchResult, SenderMeans, patch_end
from .prompts import build_prompts
from .readout import final_norm_of, unembedding
from .stage_api import StageInput, StageOutput, StatsConfig, option
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts
from .upstream_checks import StoreMismatchError, check_capture_prompts, clean_filter

__all__ = ["HeadsConfig", "HeadsResult", "compute", "corrupted_means", "patch_all"]


@dataclass(frozen=True)
class HeadsConfig(StatsConfig):
    coverage: float = option(0.8, "Share of the candidates' negative effect the head set covers.", min=0.01, max=1.0)
    attention_floor: float = option(0.05, "Least mean attention END->S of a head-set head (besides its layer's "
                                          "median).", min=0.0, max=1.0)


@dataclass
class HeadsResult:
    """Everything the heads tables hold; arrays are `[n, L, H]` per prompt or `[L*H]` per head."""

    n_layers: int
    n_heads: int
    prompt_ids: np.ndarray  # [n]
    skipped_reason: str | None = None
    attn: np.ndarray | None = None
    dla_subject: np.ndarray | None = None
    dla_answer: np.ndarray | None = None
    ranks: np.ndarray | None = None
    m_clean: np.ndarray | None = None
    effect_subject: np.ndarray | None = None  # [n, L, H] per-prompt effect%
    effect_relation: np.ndarray | None = None
    mlp_effect_subject: np.ndarray | None = None  # [n, L]
    mlp_effect_relation: np.ndarray | None = None
    pearson: tuple | None = None  # (r, lo, hi), each [L*H]
    effect: tuple | None = None  # (effect, lo, hi, se, simultaneous lo, simultaneous hi), each [L*H]
    effect_relation_pct: np.ndarray | None = None  # [L*H]
    head_set: HeadSet | None = None
    rule: HeadSetRule | None = None
    set_row: dict = field(default_factory=dict)
    corrupted: list = field(default_factory=list)  # the corrupted prompts (tokenized): the senders' inputs
    means: SenderMeans | None = None  # the senders' replacement outputs: means over the subject-corrupted prompts


def corrupted_means(lm: LoadedModel, prompts: list[TokenizedPrompt], batch_size: int) -> SenderMeans:
    """Mean raw head outputs `[L, H, d]` and MLP outputs `[L, d]` at END over corrupted prompts (streamed)."""
    head_sum = mlp_sum = None
    for _, batch in length_sorted_batches(prompts, batch_size):
        cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
        h, m = cap.head_raw.double().sum(0), cap.mlp_out.double().sum(0)
        head_sum, mlp_sum = (h, m) if head_sum is None else (head_sum + h, mlp_sum + m)
    n = len(prompts)
    return SenderMeans((head_sum / n).float(), (mlp_sum / n).float())


def patch_all(lm: LoadedModel, clean: list[TokenizedPrompt], subject_means: SenderMeans,
              relation_corrupt: list[TokenizedPrompt], batch_size: int, progress=None) -> list[PatchResult]:
    """Path-patch every head and MLP of every clean prompt (results in prompt order).

    First result: senders set to their mean over subject-corrupted prompts (the paper's protocol).
    Second (when `relation_corrupt` is given): senders set to their output on the same prompt with the
    relation word corrupted, which tells whether a head's contribution depends on the task.
    """
    runner = EndRunner(lm)
    n, L, H = len(clean), lm.dims.n_layers, lm.dims.n_heads
    by_source = {p.prompt.source_prompt_id: p for p in relation_corrupt}
    out = [PatchResult(torch.empty(n), torch.empty(n, L, H), torch.empty(n, L))
           for _ in range(2 if relation_corrupt else 1)]
    for idx, batch in length_sorted_batches(clean, batch_size):
        cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
        answer = torch.tensor([p.answer_token_id for p in batch], device=lm.device)
        senders = [subject_means]
        if relation_corrupt:
            twins = [by_source[p.prompt.prompt_id] for p in batch]
            rcap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in twins], lm.pad_id)
            senders.append(SenderMeans(rcap.head_raw, rcap.mlp_out))
        for res, values in zip(out, senders):
            r = patch_end(runner, cap, answer, values)
            res.m_clean[idx], res.m_heads[idx], res.m_mlps[idx] = r.m_clean.cpu(), r.m_heads.cpu(), r.m_mlps.cpu()
        if progress is not None:
            progress(advance=len(batch))
    return out


def stored_head_stats(capture, n: int, L: int, H: int):
    """attn END->S, DLA onto subject and answer `[n, L, H]` and head outputs `[n, L, H, d]` from the capture."""
    heads = capture.read("heads", ["prompt_id", "layer", "head", "attn_to_s", "output"], filters=clean_filter(n))
    pid = heads["prompt_id"].to_numpy()
    lay, hd = heads["layer"].to_numpy(), heads["head"].to_numpy()
    attn = np.full((n, L, H), np.nan)
    attn[pid, lay, hd] = heads["attn_to_s"].to_numpy()
    out_flat = heads["output"].combine_chunks().flatten().to_numpy().reshape(len(heads), -1)
    outputs = np.zeros((n, L, H, out_flat.shape[1]), dtype=np.float32)
    outputs[pid, lay, hd] = out_flat
    dla = pl.from_arrow(capture.read("dla", ["prompt_id", "token_role", "layer", "head", "value"],
                                     filters=clean_filter(n) + [("head", ">=", 0)]))
    values = {}
    for role in ("subject", "answer"):
        part = dla.filter(pl.col("token_role") == role)
        arr = np.full((n, L, H), np.nan)
        arr[part["prompt_id"].to_numpy(), part["layer"].to_numpy(), part["head"].to_numpy()] = part["value"].to_numpy()
        values[role] = arr
    if np.isnan(attn).any() or np.isnan(values["subject"]).any():
        raise StoreMismatchError(f"capture {capture.result_id} does not cover every prompt and head")
    return attn, values["subject"], values["answer"], outputs


def compute(inp: StageInput) -> Iterator[HeadsResult]:
    lm, relation, shot, config = inp.lm, inp.relation, inp.shot, inp.config
    L, H, d = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model
    subjects = {f.subject.casefold() for f in relation.facts}
    if len(subjects) < 2:
        reason = f"relation {relation.name} has {len(subjects)} distinct subject(s); a corrupted mean needs at least 2"
        yield HeadsResult(L, H, np.zeros(0, np.int32), skipped_reason=reason)
        return StageOutput({"skipped_reason": reason, "head_set": []})

    tok = lambda ps: tokenize_prompts(lm.tokenizer, ps, lm.max_length)  # noqa: E731
    build = lambda v: build_prompts(relation, shot, config.seed, variants=(v,), max_prompts=config.max_prompts)  # noqa: E731
    clean, corrupt_subject = tok(build("clean")), tok(build("subject_corrupt"))
    check_capture_prompts(inp.upstream["capture"], clean)
    try:
        corrupt_relation = tok(build("relation_corrupt"))
        words = sorted({p.prompt.relation_word for p in corrupt_relation if p.prompt.relation_word})
        relation_note = ", ".join(words)
    except ValueError as exc:
        corrupt_relation, relation_note = [], f"none: {exc}"
    n = len(clean)
    inp.progress(total=n * 2 + len(corrupt_subject) + len(corrupt_relation))
    subject_means = corrupted_means(lm, corrupt_subject, config.batch_size)
    inp.progress(advance=len(corrupt_subject) + len(corrupt_relation))
    t_patch = time.perf_counter()
    patched = patch_all(lm, clean, subject_means, corrupt_relation, config.batch_size, inp.progress)
    seconds_patching = time.perf_counter() - t_patch

    attn, dla_subject, dla_answer, outputs = stored_head_stats(inp.upstream["capture"], n, L, H)
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    subject_ids = torch.tensor([p.subject_token_id for p in clean]).repeat_interleave(L * H)
    ranks = logit_lens_rank(torch.from_numpy(outputs.reshape(-1, d)).to(lm.device), subject_ids.to(lm.device),
                            w_u, norm.gain, norm.kind).numpy().reshape(n, L, H)
    inp.progress(advance=n)

    subj = patched[0]
    eff_s, eff_s_mlp = (t.numpy() for t in subj.effect_pct())
    eff_r, eff_r_mlp = (t.numpy() for t in patched[1].effect_pct()) if corrupt_relation else (None, None)
    m_clean = subj.m_clean.double().numpy()
    effect, lo, hi, se = bootstrap_ratio_effect(subj.m_heads.double().numpy().reshape(n, L * H), m_clean,
                                                config.n_boot, config.seed)
    rule = HeadSetRule(coverage=config.coverage, attention_floor=config.attention_floor)
    simul_lo, simul_hi = simultaneous_interval(effect, se, rule.level)
    effect_rel = (ratio_effect(patched[1].m_heads.double().numpy().reshape(n, L * H), m_clean)
                  if corrupt_relation else None)
    r = pearson(attn.reshape(n, -1), dla_subject.reshape(n, -1))
    r_lo, r_hi = bootstrap_pearson_ci(attn.reshape(n, -1), dla_subject.reshape(n, -1), config.n_boot, config.seed)
    head_set = select_head_set(effect.reshape(L, H), attn.mean(0), rule, simul_hi.reshape(L, H))
    names = [f"L{l}.H{h}" for l, h in head_set.heads]
    no_heads = None if names else (
        f"no argument-passing heads: none of the {L * H} heads has a patching effect significantly below 0 "
        f"({int(head_set.significant.sum())} significant) while attending to S above its layer's median and "
        f"{rule.attention_floor:g}")
    set_row = dict(
        heads=names, rule=rule.to_json(), coverage=rule.coverage, no_heads_reason=no_heads,
        n_significant=int(head_set.significant.sum()), n_tested=L * H,
        covered_share=head_set.covered_share, covered_share_all=head_set.covered_share_all,
        set_effect_pct=float(sum(effect.reshape(L, H)[lh] for lh in head_set.heads)),
        set_effect_relation_pct=(float(sum(effect_rel.reshape(L, H)[lh] for lh in head_set.heads))
                                 if effect_rel is not None else None),
        n_prompts=n, n_corrupt_subject=len(corrupt_subject), n_corrupt_relation=len(corrupt_relation),
        relation_corruption=relation_note, seconds_patching=seconds_patching)
    yield HeadsResult(
        L, H, np.array([p.prompt.prompt_id for p in clean], dtype=np.int32), None, attn, dla_subject, dla_answer,
        ranks, m_clean, eff_s, eff_r, eff_s_mlp, eff_r_mlp, (r, r_lo, r_hi), (effect, lo, hi, se, simul_lo, simul_hi),
        effect_rel, head_set, rule, set_row, corrupt_subject + corrupt_relation, subject_means)
    figures = _plots(inp.title, effect.reshape(L, H), attn.mean(0), attn, dla_subject, r.reshape(L, H),
                     head_set.heads)
    return StageOutput({"n_prompts": n, "head_set": names, "no_heads_reason": no_heads,
                        "seconds_patching": round(seconds_patching, 3)}, figures)


def _plots(title, effect, mean_attn, attn, dla_subject, r, head_set) -> dict[str, bytes]:
    """Heatmaps of effect% and attention END->S, and the attention-vs-DLA scatter of the top heads."""
    mark = set(head_set)
    top = list(head_set[:5]) or [tuple(np.unravel_index(np.nanargmax(np.abs(np.nan_to_num(r))), r.shape))]
    return {
        "effect_heatmap": plots.heatmap(effect, f"path-patching effect % on M\n{title}", mark=mark,
                                        label="effect %", mark_label="head set"),
        "attention_heatmap": plots.heatmap(mean_attn, f"mean attention END→S\n{title}", mark=mark,
                                           center_zero=False, cmap="viridis", label="attention",
                                           mark_label="head set"),
        "attention_vs_dla": plots.scatter(
            np.concatenate([attn[:, l, h] for l, h in top]), np.concatenate([dla_subject[:, l, h] for l, h in top]),
            [f"L{l}.H{h}" for l, h in top for _ in range(attn.shape[0])],
            f"attention END→S vs DLA onto the subject\n{title}", xlabel="attention END→S",
            ylabel="DLA onto subject token"),
    }
