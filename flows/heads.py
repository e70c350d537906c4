"""Step 1 of the mechanism for one (model, relation, shot): the argument-passing heads (METHOD.md §4).

Plain functions (no Prefect): the Prefect flow in `sweep.py` wraps them, tests call them directly.
Per-prompt head statistics read the capture tables from the store; path patching needs the model
(corrupted-prompt means and END-only re-runs, see `tasks.path_patching`). Results are the store's
"heads" stage: `head_prompts`, `mlp_patching`, `head_summary`, `head_sets`, plus PNG plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch

from factrecall.storage.schema import schema
from factrecall.storage.store import PartitionKey, Store
from factrecall.tasks import plots
from factrecall.tasks.capture import capture_batch
from factrecall.tasks.head_stats import (
    HeadSetRule,
    bootstrap_pearson_ci,
    bootstrap_ratio_effect,
    logit_lens_rank,
    pearson,
    ratio_effect,
    select_head_set,
)
from factrecall.tasks.models import LoadedModel
from factrecall.tasks.partition_capture import final_norm_of, unembedding
from factrecall.tasks.path_patching import EndRunner, PatchResult, SenderMeans, patch_end
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.relations import Relation
from factrecall.tasks.tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts
from factrecall.version import code_version

from .partition import StageConfig, run_partition, stage_input_hash

STAGE = "heads"


@dataclass(frozen=True)
class HeadConfig(StageConfig):
    coverage: float = 0.8


def heads_input_hash(lm: LoadedModel, relation: Relation, shot: int, config: HeadConfig) -> str:
    return stage_input_hash(lm, relation, shot, config, STAGE)


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


def stored_head_stats(store: Store, key: PartitionKey, n: int, L: int, H: int):
    """attn END->S, DLA onto subject and answer `[n, L, H]` and head outputs `[n, L, H, d]` from the store."""
    heads = store.read("heads", key, ["prompt_id", "variant", "layer", "head", "attn_to_s", "output"])
    heads = heads.filter(pc.equal(heads["variant"], "clean"))
    pid = heads["prompt_id"].to_numpy()
    lay, hd = heads["layer"].to_numpy(), heads["head"].to_numpy()
    attn = np.full((n, L, H), np.nan)
    attn[pid, lay, hd] = heads["attn_to_s"].to_numpy()
    out_flat = heads["output"].combine_chunks().flatten().to_numpy().reshape(len(heads), -1)
    outputs = np.zeros((n, L, H, out_flat.shape[1]), dtype=np.float32)
    outputs[pid, lay, hd] = out_flat
    dla = pl.from_arrow(store.read("dla", key, ["prompt_id", "variant", "token_role", "layer", "head", "value"]))
    dla = dla.filter((pl.col("variant") == "clean") & pl.col("head").is_not_null())
    values = {}
    for role in ("subject", "answer"):
        part = dla.filter(pl.col("token_role") == role)
        arr = np.full((n, L, H), np.nan)
        arr[part["prompt_id"].to_numpy(), part["layer"].to_numpy(), part["head"].to_numpy()] = part["value"].to_numpy()
        values[role] = arr
    if np.isnan(attn).any() or np.isnan(values["subject"]).any():
        raise RuntimeError(f"capture tables of {key.path()} do not cover every prompt and head; rerun `factrecall run`")
    return attn, values["subject"], values["answer"], outputs


def run_head_analysis(store: Store, lm: LoadedModel, relation: Relation, shot: int, config: HeadConfig,
                      run_id: str, progress=None, force: bool = False) -> dict:
    """Compute and commit the "heads" stage of one partition; returns a summary dict."""
    key = PartitionKey(lm.model_id, relation.name, shot)
    digest = heads_input_hash(lm, relation, shot, config)
    if not force and store.is_committed(key, digest, stage=STAGE):
        return {"model": key.model, "relation": key.relation, "shot": shot, "status": "skipped"}
    run_partition(store, lm, relation, shot, config.capture(), run_id)  # the capture it reads (skipped if present)
    started = time.perf_counter()
    L, H, d = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model
    subjects = {f.subject.casefold() for f in relation.facts}
    if len(subjects) < 2:
        reason = f"relation {relation.name} has {len(subjects)} distinct subject(s); a corrupted mean needs at least 2"
        with store.open_partition(key, digest, run_id, stage=STAGE) as writer:
            writer.write("head_sets", _head_set_row(d, skipped_reason=reason))
            writer.commit({"skipped_reason": reason})
        return {"model": key.model, "relation": key.relation, "shot": shot, "status": "skipped", "reason": reason}

    tok = lambda ps: tokenize_prompts(lm.tokenizer, ps, lm.max_length)  # noqa: E731
    build = lambda v: build_prompts(relation, shot, config.seed, variants=(v,), max_prompts=config.max_prompts)  # noqa: E731
    clean, corrupt_subject = tok(build("clean")), tok(build("subject_corrupt"))
    try:
        corrupt_relation = tok(build("relation_corrupt"))
        words = sorted({p.prompt.relation_word for p in corrupt_relation if p.prompt.relation_word})
        relation_note = ", ".join(words)
    except ValueError as exc:
        corrupt_relation, relation_note = [], f"none: {exc}"
    n = len(clean)
    if progress is not None:
        progress(total=n * 2 + len(corrupt_subject) + len(corrupt_relation))
    subject_means = corrupted_means(lm, corrupt_subject, config.batch_size)
    if progress is not None:
        progress(advance=len(corrupt_subject) + len(corrupt_relation))
    t_patch = time.perf_counter()
    patched = patch_all(lm, clean, subject_means, corrupt_relation, config.batch_size, progress)
    seconds_patching = time.perf_counter() - t_patch

    attn, dla_subject, dla_answer, outputs = stored_head_stats(store, key, n, L, H)
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    subject_ids = torch.tensor([p.subject_token_id for p in clean]).repeat_interleave(L * H)
    ranks = logit_lens_rank(torch.from_numpy(outputs.reshape(-1, d)).to(lm.device), subject_ids.to(lm.device),
                            w_u, norm.gain, norm.kind).numpy().reshape(n, L, H)
    if progress is not None:
        progress(advance=n)

    subj = patched[0]
    eff_s, eff_s_mlp = (t.numpy() for t in subj.effect_pct())
    eff_r, eff_r_mlp = (t.numpy() for t in patched[1].effect_pct()) if corrupt_relation else (None, None)
    m_clean = subj.m_clean.double().numpy()
    effect, lo, hi = bootstrap_ratio_effect(subj.m_heads.double().numpy().reshape(n, L * H), m_clean,
                                            config.n_boot, config.seed)
    effect_rel = (ratio_effect(patched[1].m_heads.double().numpy().reshape(n, L * H), m_clean)
                  if corrupt_relation else None)
    r = pearson(attn.reshape(n, -1), dla_subject.reshape(n, -1))
    r_lo, r_hi = bootstrap_pearson_ci(attn.reshape(n, -1), dla_subject.reshape(n, -1), config.n_boot, config.seed)
    rule = HeadSetRule(coverage=config.coverage)
    head_set = select_head_set(effect.reshape(L, H), attn.mean(0), rule)
    order = {lh: i + 1 for i, lh in enumerate(head_set.heads)}

    plot_paths = _plots(store, key, effect.reshape(L, H), attn.mean(0), attn, dla_subject, r.reshape(L, H),
                        head_set.heads)
    tables = {
        "head_prompts": _head_prompts_table(d, n, L, H, clean, attn, dla_subject, dla_answer, ranks, m_clean,
                                            eff_s, eff_r),
        "mlp_patching": _mlp_table(d, n, L, clean, eff_s_mlp, eff_r_mlp),
        "head_summary": _summary_table(d, L, H, n, attn, dla_subject, dla_answer, ranks, r, r_lo, r_hi,
                                       effect, lo, hi, effect_rel, head_set, order),
        "head_sets": _head_set_row(
            d, heads=[f"L{l}.H{h}" for l, h in head_set.heads], rule=rule.to_json(), coverage=rule.coverage,
            covered_share=head_set.covered_share, covered_share_all=head_set.covered_share_all,
            set_effect_pct=float(sum(effect.reshape(L, H)[lh] for lh in head_set.heads)),
            set_effect_relation_pct=(float(sum(effect_rel.reshape(L, H)[lh] for lh in head_set.heads))
                                     if effect_rel is not None else None),
            n_prompts=n, n_corrupt_subject=len(corrupt_subject), n_corrupt_relation=len(corrupt_relation),
            relation_corruption=relation_note, plots=plot_paths, seconds_patching=seconds_patching),
    }
    with store.open_partition(key, digest, run_id, stage=STAGE) as writer:
        for name, table in tables.items():
            writer.write(name, table)
        writer.commit({"n_prompts": n, "head_set": [f"L{l}.H{h}" for l, h in head_set.heads],
                       "seconds": round(time.perf_counter() - started, 3),
                       "seconds_patching": round(seconds_patching, 3), "code_version": code_version()})
    return {"model": key.model, "relation": key.relation, "shot": shot, "status": "written", "n_prompts": n,
            "head_set": [f"L{l}.H{h}" for l, h in head_set.heads], "seconds": time.perf_counter() - started,
            "seconds_patching": seconds_patching}


def _head_set_row(d: int, **values) -> pa.Table:
    sch = schema("head_sets", d)
    defaults = {"heads": [], "n_heads": len(values.get("heads", [])), "plots": []}
    row = {name: values.get(name, defaults.get(name)) for name in sch.names}
    return pa.Table.from_pylist([row], schema=sch)


def _head_prompts_table(d, n, L, H, clean, attn, dla_s, dla_a, ranks, m_clean, eff_s, eff_r) -> pa.Table:
    pid = np.array([p.prompt.prompt_id for p in clean])
    grid = lambda a: np.asarray(a).reshape(-1)  # noqa: E731  [n, L, H] -> rows in (prompt, layer, head) order
    cols = {
        "prompt_id": np.repeat(pid, L * H).astype(np.int32),
        "layer": np.tile(np.repeat(np.arange(L), H), n).astype(np.int16),
        "head": np.tile(np.arange(H), n * L).astype(np.int16),
        "attn_to_s": grid(attn).astype(np.float32),
        "dla_subject": grid(dla_s).astype(np.float32),
        "dla_answer": grid(dla_a).astype(np.float32),
        "subject_rank": grid(ranks).astype(np.int32),
        "m_clean": np.repeat(m_clean, L * H).astype(np.float32),
        "effect_subject_pct": grid(eff_s).astype(np.float32),
        "effect_relation_pct": grid(eff_r).astype(np.float32) if eff_r is not None else None,
    }
    sch = schema("head_prompts", d)
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if cols[f.name] is not None
                                 else pa.nulls(n * L * H, f.type) for f in sch], schema=sch)


def _mlp_table(d, n, L, clean, eff_s, eff_r) -> pa.Table:
    pid = np.array([p.prompt.prompt_id for p in clean])
    sch = schema("mlp_patching", d)
    return pa.Table.from_arrays([
        pa.array(np.repeat(pid, L), pa.int32()), pa.array(np.tile(np.arange(L), n), pa.int16()),
        pa.array(eff_s.reshape(-1), pa.float32()),
        pa.array(eff_r.reshape(-1), pa.float32()) if eff_r is not None else pa.nulls(n * L, pa.float32()),
    ], schema=sch)


def _summary_table(d, L, H, n, attn, dla_s, dla_a, ranks, r, r_lo, r_hi, effect, lo, hi, effect_rel,
                   head_set, order) -> pa.Table:
    rows = []
    for l in range(L):
        for h in range(H):
            k = l * H + h
            rows.append(dict(
                layer=l, head=h, n=n, mean_attn_to_s=float(attn[:, l, h].mean()),
                mean_dla_subject=float(dla_s[:, l, h].mean()), mean_dla_answer=float(dla_a[:, l, h].mean()),
                median_subject_rank=float(np.median(ranks[:, l, h])),
                pearson_r=_num(r[k]), r_lo=_num(r_lo[k]), r_hi=_num(r_hi[k]),
                effect_pct=float(effect[k]), effect_lo=float(lo[k]), effect_hi=float(hi[k]),
                effect_relation_pct=float(effect_rel[k]) if effect_rel is not None else None,
                attn_above_layer_median=bool(head_set.above_median[l, h]),
                in_head_set=(l, h) in order, set_order=order.get((l, h)),
            ))
    return pa.Table.from_pylist(rows, schema=schema("head_summary", d))


def _num(x) -> float | None:
    return None if np.isnan(x) else float(x)


def _plots(store: Store, key: PartitionKey, effect, mean_attn, attn, dla_subject, r, head_set) -> list[str]:
    """Heatmaps of effect% and attention END->S, and the attention-vs-DLA scatter of the top heads."""
    folder = store.root / "plots" / STAGE / key.path()
    folder.mkdir(parents=True, exist_ok=True)
    mark = set(head_set)
    title = f"{key.model} · {key.relation} · shot {key.shot}"
    paths = [
        plots.heatmap(effect, f"path-patching effect % on M\n{title}", folder / "effect_heatmap.png", mark=mark,
                      label="effect %", mark_label="head set"),
        plots.heatmap(mean_attn, f"mean attention END→S\n{title}", folder / "attention_heatmap.png", mark=mark,
                      center_zero=False, cmap="viridis", label="attention", mark_label="head set"),
    ]
    top = list(head_set[:5]) or [tuple(np.unravel_index(np.nanargmax(np.abs(np.nan_to_num(r))), r.shape))]
    paths.append(plots.scatter(
        np.concatenate([attn[:, l, h] for l, h in top]), np.concatenate([dla_subject[:, l, h] for l, h in top]),
        [f"L{l}.H{h}" for l, h in top for _ in range(attn.shape[0])],
        f"attention END→S vs DLA onto the subject\n{title}", folder / "attention_vs_dla.png",
        xlabel="attention END→S", ylabel="DLA onto subject token"))
    return [str(Path(p).relative_to(store.root)) for p in paths]
