"""Step 1 of the mechanism for one (model, relation, shot): the argument-passing heads (docs/METHOD.md §4).

Per-prompt head statistics come from the capture (the upstream result the runner hands in); path
patching needs the model (corrupted-prompt means and END-only re-runs, see ``tasks.path_patching``).
``compute`` yields one ``HeadsResult``, which ``storage.heads_tables`` encodes as ``head_prompts``,
``mlp_patching``, ``head_summary`` and ``head_sets``, and returns the plots.
"""

from __future__ import annotations

import time
import warnings
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
    attention_targets,
    bootstrap_pearson_ci,
    bootstrap_ratio_effect,
    copy_auc,
    logit_lens_rank,
    passes_attention,
    pearson,
    ratio_effect,
    select_head_set,
    simultaneous_interval,
)
from .intervals import MIN_N, bootstrap_mean_ci
from .models import LoadedModel
from .path_patching import EndRunner, PatchResult, SenderMeans, patch_end
from .prompts import build_prompts
from .readout import final_norm_of, unembedding
from .stage_api import StageInput, StageOutput, StatsConfig, option
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts
from .upstream_checks import StoreMismatchError, check_capture_prompts, clean_filter, correct_prompts

__all__ = ["HeadsConfig", "HeadsResult", "compute", "corrupted_means", "patch_all"]


@dataclass(frozen=True)
class HeadsConfig(StatsConfig):
    coverage: float = option(0.8, "Share of the candidates' negative effect the head set covers.", min=0.01, max=1.0)
    attention_floor: float = option(0.05, "Least mean attention END->S of a head-set head (besides its layer's "
                                          "median).", min=0.0, max=1.0)
    min_effect: float = option(1.0, "Least size of a head-set head's path-patching effect, in percent of M (the "
                                    "effect must be at most minus this).", min=0.0, max=100.0)


@dataclass
class HeadsResult:
    """Everything the heads tables hold; arrays are `[n, L, H]` per prompt or `[L*H]` per head.

    Per-prompt arrays cover every clean prompt; per-head statistics are over the *judged* prompts (those the
    model answers correctly, METHOD.md §10), the copy statistics over the judged prompts whose answer is not a
    subject token, and the ``*_all`` statistics over every prompt."""

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
    correct: np.ndarray | None = None  # [n] the model answers the prompt correctly (judged)
    answer_in_subject: np.ndarray | None = None  # [n] the answer token is a subject token (left out of copying)
    copy: np.ndarray | None = None  # [n, L, H] copy AUC: own subject vs the relation's other subjects in the lens
    copy_summary: tuple | None = None  # (mean, lo, hi, n) over the judged copy prompts, each [L*H] (n scalar)
    copy_all: np.ndarray | None = None  # [L*H] mean copy AUC over every prompt whose answer is not a subject token
    effect_all: tuple | None = None  # (effect, lo, hi) over every prompt, each [L*H]
    subject_top: np.ndarray | None = None  # [L*H] share of judged prompts whose largest attention target is the subject
    sink_top: np.ndarray | None = None  # [L*H] share whose largest target is position 0


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
    relation word corrupted, which tells whether a head's contribution depends on the task. A clean prompt
    whose template names no relation word has no twin: its rows of the second result are NaN.
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
        has_twin = torch.tensor([p.prompt.prompt_id in by_source for p in batch])
        if relation_corrupt:
            # a prompt without a twin is patched with its own clean outputs (no change), then masked to NaN
            twins = [by_source.get(p.prompt.prompt_id, p) for p in batch]
            rcap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in twins], lm.pad_id)
            senders.append(SenderMeans(rcap.head_raw, rcap.mlp_out))
        for k, (res, values) in enumerate(zip(out, senders)):
            r = patch_end(runner, cap, answer, values)
            m_heads, m_mlps = r.m_heads.cpu().clone(), r.m_mlps.cpu().clone()
            if k == 1:
                m_heads[~has_twin], m_mlps[~has_twin] = float("nan"), float("nan")
            res.m_clean[idx], res.m_heads[idx], res.m_mlps[idx] = r.m_clean.cpu(), m_heads, m_mlps
        if progress is not None:
            progress(advance=len(batch))
    return out


def stored_head_stats(capture, n: int, L: int, H: int):
    """attn END->S, DLA onto subject and answer `[n, L, H]`, head outputs `[n, L, H, d]` and the attention rows
    END -> every position (a list over (prompt, layer, head) in that order) from the capture."""
    heads = capture.read("heads", ["prompt_id", "layer", "head", "attn_to_s", "output", "attn"], filters=clean_filter(n))
    pid = heads["prompt_id"].to_numpy()
    lay, hd = heads["layer"].to_numpy(), heads["head"].to_numpy()
    attn = np.full((n, L, H), np.nan)
    attn[pid, lay, hd] = heads["attn_to_s"].to_numpy()
    out_flat = heads["output"].combine_chunks().flatten().to_numpy().reshape(len(heads), -1)
    outputs = np.zeros((n, L, H, out_flat.shape[1]), dtype=np.float32)
    outputs[pid, lay, hd] = out_flat
    rows = heads["attn"].to_pylist()
    attn_rows: list = [None] * (n * L * H)
    for k, (p, l, h) in enumerate(zip(pid, lay, hd)):
        attn_rows[(p * L + l) * H + h] = rows[k]
    dla = pl.from_arrow(capture.read("dla", ["prompt_id", "token_role", "layer", "head", "value"],
                                     filters=clean_filter(n) + [("head", ">=", 0)]))
    values = {}
    for role in ("subject", "answer"):
        part = dla.filter(pl.col("token_role") == role)
        arr = np.full((n, L, H), np.nan)
        arr[part["prompt_id"].to_numpy(), part["layer"].to_numpy(), part["head"].to_numpy()] = part["value"].to_numpy()
        values[role] = arr
    if np.isnan(attn).any() or np.isnan(values["subject"]).any() or any(r is None for r in attn_rows):
        raise StoreMismatchError(f"capture {capture.result_id} does not cover every prompt and head")
    return attn, values["subject"], values["answer"], outputs, attn_rows


def _subject_lens(outputs: np.ndarray, clean: list[TokenizedPrompt], lm: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """Logit-lens scores `[n, L, H, S]` of every head output onto the S distinct subject tokens of the partition
    (each prompt's subject first token), and each prompt's own index in S `[n]`."""
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    tokens = sorted({p.subject_token_id for p in clean})
    own = np.array([tokens.index(p.subject_token_id) for p in clean])
    w = w_u[torch.tensor(tokens, device=w_u.device)].float()  # [S, d]
    n, L, H, d = outputs.shape
    out = np.empty((n, L, H, len(tokens)), dtype=np.float64)
    for i in range(n):
        v = torch.from_numpy(outputs[i].reshape(L * H, d)).to(w.device).float()
        if norm.kind == "layernorm":
            v = v - v.mean(-1, keepdim=True)
        out[i] = ((v * norm.gain) @ w.T).double().cpu().numpy().reshape(L, H, len(tokens))
    return out, own


def _nan_stats(k: int, m: int) -> tuple:
    return tuple(np.full(m, np.nan) for _ in range(k))


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
    corrupt_relation = tok(build("relation_corrupt"))
    relation_note = _relation_note(relation, clean, corrupt_relation)
    n = len(clean)
    inp.progress(total=n * 2 + len(corrupt_subject) + len(corrupt_relation))
    subject_means = corrupted_means(lm, corrupt_subject, config.batch_size)
    inp.progress(advance=len(corrupt_subject) + len(corrupt_relation))
    t_patch = time.perf_counter()
    patched = patch_all(lm, clean, subject_means, corrupt_relation, config.batch_size, inp.progress)
    seconds_patching = time.perf_counter() - t_patch

    capture = inp.upstream["capture"]
    attn, dla_subject, dla_answer, outputs, attn_rows = stored_head_stats(capture, n, L, H)
    correct = correct_prompts(capture, n)
    in_subject = np.array([p.answer_in_subject for p in clean])
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    subject_ids = torch.tensor([p.subject_token_id for p in clean]).repeat_interleave(L * H)
    ranks = logit_lens_rank(torch.from_numpy(outputs.reshape(-1, d)).to(lm.device), subject_ids.to(lm.device),
                            w_u, norm.gain, norm.kind).numpy().reshape(n, L, H)
    lens, own = _subject_lens(outputs, clean, lm)
    copy = copy_auc(lens, own)  # [n, L, H]
    spans = [(p.s_first_pos, p.s_pos) for p in clean for _ in range(L * H)]
    top, sink = (a.reshape(n, L, H) for a in attention_targets(attn_rows, spans))
    inp.progress(advance=n)

    subj = patched[0]
    eff_s, eff_s_mlp = (t.numpy() for t in subj.effect_pct())
    eff_r, eff_r_mlp = (t.numpy() for t in patched[1].effect_pct()) if corrupt_relation else (None, None)
    m_clean = subj.m_clean.double().numpy()
    m_heads = subj.m_heads.double().numpy().reshape(n, L * H)
    judged = correct
    nj = int(judged.sum())
    # per-head statistics on the judged prompts (the claims' prompts), the effect over every prompt beside them
    all_effect, all_lo, all_hi, _ = bootstrap_ratio_effect(m_heads, m_clean, config.n_boot, config.seed)
    if nj >= 2:
        effect, lo, hi, se = bootstrap_ratio_effect(m_heads[judged], m_clean[judged], config.n_boot, config.seed)
    else:
        effect, lo, hi, se = _nan_stats(4, L * H)
    rule = HeadSetRule(coverage=config.coverage, attention_floor=config.attention_floor, min_effect=config.min_effect)
    simul_lo, simul_hi = simultaneous_interval(effect, se, rule.level)
    if corrupt_relation:
        m_rel = patched[1].m_heads.double().numpy().reshape(n, L * H)
        twin = judged & np.isfinite(m_rel).all(1)
        effect_rel = ratio_effect(m_rel[twin], m_clean[twin]) if twin.any() else np.full(L * H, np.nan)
    else:
        effect_rel = None
    copy_ok = judged & ~in_subject
    nc = int(copy_ok.sum())
    flat = lambda a, m: a[m].reshape(int(m.sum()), -1)  # noqa: E731  [n, L, H] -> [prompts, L*H]
    if nc >= 2:
        r = pearson(flat(attn, copy_ok), flat(dla_subject, copy_ok))
        r_lo, r_hi = bootstrap_pearson_ci(flat(attn, copy_ok), flat(dla_subject, copy_ok), config.n_boot, config.seed)
        c_mean, c_lo, c_hi = bootstrap_mean_ci(flat(copy, copy_ok), config.n_boot, config.seed)
    else:
        r, r_lo, r_hi = _nan_stats(3, L * H)
        c_mean, c_lo, c_hi = _nan_stats(3, L * H)
    not_in = ~in_subject
    copy_all = flat(copy, not_in).mean(0) if not_in.any() else np.full(L * H, np.nan)
    basis = judged if nj else np.ones(n, dtype=bool)  # attention shares of the judged prompts (all when none)
    # a prompt whose subject is position 0 alone cannot tell the subject from the sink (METHOD.md §4): the largest-
    # target rule needs MIN_N prompts where it can, and is not applied (and says so) below that
    n_decidable = int(np.isfinite(top[basis][:, 0, 0]).sum()) if basis.any() else 0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every row undecidable: NaN
        subject_top = np.nanmean(top[basis], 0)
    sink_top = sink[basis].mean(0)
    mean_attn = attn[basis].mean(0)
    top_rule = subject_top if n_decidable >= MIN_N else None
    if nj >= MIN_N:
        head_set = select_head_set(effect.reshape(L, H), mean_attn, rule, simul_hi.reshape(L, H), top_rule)
        names = [f"L{l}.H{h}" for l, h in head_set.heads]
        no_heads = None if names else (
            f"no argument-passing heads: none of the {L * H} heads has a patching effect significantly below 0 and "
            f"at most -{rule.min_effect:g}% ({int(head_set.significant.sum())} significantly below 0) while "
            f"attending to S above its layer's median and {rule.attention_floor:g}" + (
                f" with the subject its largest target in {rule.subject_top_share:.0%} of the prompts"
                if top_rule is not None else ""))
    else:
        head_set = HeadSet([], passes_attention(mean_attn, rule, top_rule), simul_hi.reshape(L, H) < 0, 0.0, 0.0)
        names = []
        no_heads = (f"too few prompts answered correctly: {nj} of {n} (accuracy {nj / max(n, 1):.2f}); the head set "
                    f"and the claims need at least {MIN_N}")
    eff2 = effect.reshape(L, H)
    set_row = dict(
        heads=names, rule=rule.to_json(), coverage=rule.coverage, no_heads_reason=no_heads,
        n_significant=int(head_set.significant.sum()), n_tested=L * H,
        covered_share=head_set.covered_share, covered_share_all=head_set.covered_share_all,
        set_effect_pct=float(sum(eff2[lh] for lh in head_set.heads)),
        set_effect_relation_pct=(float(sum(effect_rel.reshape(L, H)[lh] for lh in head_set.heads))
                                 if effect_rel is not None and head_set.heads else None),
        n_prompts=n, n_correct=nj, n_copy=nc, n_answer_in_subject=int(in_subject.sum()),
        n_subject_top_decidable=n_decidable,
        subject_top_rule=("applied" if top_rule is not None else
                          f"not applied: the subject is position 0 alone in all but {n_decidable} of the prompts (no "
                          f"BOS, a subject-first template), where it cannot be told from the sink"),
        n_corrupt_subject=len(corrupt_subject), n_corrupt_relation=len(corrupt_relation),
        relation_corruption=relation_note, seconds_patching=seconds_patching)
    yield HeadsResult(
        L, H, np.array([p.prompt.prompt_id for p in clean], dtype=np.int32), None, attn, dla_subject, dla_answer,
        ranks, m_clean, eff_s, eff_r, eff_s_mlp, eff_r_mlp, (r, r_lo, r_hi), (effect, lo, hi, se, simul_lo, simul_hi),
        effect_rel, head_set, rule, set_row, corrupt_subject + corrupt_relation, subject_means,
        correct=correct, answer_in_subject=in_subject, copy=copy, copy_summary=(c_mean, c_lo, c_hi, nc),
        copy_all=copy_all, effect_all=(all_effect, all_lo, all_hi), subject_top=subject_top.reshape(-1),
        sink_top=sink_top.reshape(-1))
    plot_effect = eff2 if nj >= 2 else all_effect.reshape(L, H)
    figures = _plots(inp.title, plot_effect, mean_attn, attn, dla_subject, r.reshape(L, H), head_set.heads)
    return StageOutput({"n_prompts": n, "n_correct": nj, "head_set": names, "no_heads_reason": no_heads,
                        "seconds_patching": round(seconds_patching, 3)}, figures)


def _relation_note(relation, clean: list[TokenizedPrompt], corrupt: list[TokenizedPrompt]) -> str:
    """Which word relation_corrupt replaced in each template used, and the templates without one."""
    by_template: dict[int, set] = {}
    for p in corrupt:
        by_template.setdefault(p.prompt.template_index, set()).add(p.prompt.relation_word.split("->")[0])
    used = sorted({p.prompt.template_index for p in clean})
    words = sorted({w for t in used for w in by_template.get(t, ())})
    missing = [relation.templates[t] for t in used if t not in by_template]
    note = f"replaced: {', '.join(words)}" if words else "no template names a relation word"
    if missing:
        note += f"; none in {len(missing)} of {len(used)} templates ({'; '.join(repr(t) for t in missing[:3])}" + (
            ", ...)" if len(missing) > 3 else ")")
    return note


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
