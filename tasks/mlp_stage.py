"""Steps 2 and 3 of the mechanism for one (model, relation, shot): the MLP as an activation over the
argument-passing heads, and the task-aware component that applies the relation (docs/METHOD.md §5-6).

The regressions read the head and MLP outputs at END from the upstream capture (the vectors whose sum
the ledger verified; their residual identity is re-checked here) and the head set from the upstream
heads result. The model is needed for logit lenses over the whole vocabulary and the two causal checks
(whole forward passes with edits at END, ``tasks.end_edits``). ``compute`` yields one ``Rows`` part for
``regression_betas``, ``regression_prompts``, ``regression_heads``, ``regression_layers``,
``argument_swap`` and ``function_application``, and returns the plots.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from . import plots
from .capture import capture_batch
from .end_edits import end_logits_with_edits
from .head_stats import logit_lens_rank
from .heads_stage import HeadsConfig
from .intervals import mean_ci_fields
from .ledger import direct_logit_attribution, ledger_rtol, norm_scale
from .logit_lens import token_stats
from .mlp_regression import beta_label, fit_per_prompt, fit_pooled, task_component
from .models import LoadedModel
from .path_patching import EndRunner
from .prompts import build_prompts
from .readout import final_norm_of, unembedding
from .relations import Relation
from .stage_api import Rows, StageInput, StageOutput
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts
from .upstream_checks import StoreMismatchError, check_capture_prompts

RESIDUAL_RTOL = 1e-3  # stored vectors must satisfy resid_post = resid_pre + sum o + b_O + m (float32; a model read
# in lower precision rounds each addition in that precision: its tolerance is the ledger's, `ledger_rtol(dtype)`)
_HEAD_RE = re.compile(r"L(\d+)\.H(\d+)")


@dataclass(frozen=True)
class MlpConfig(HeadsConfig):
    """The heads settings (its upstream head set is computed with them) and nothing else of its own."""


def parse_head(name: str, n_layers: int, n_heads: int) -> tuple[int, int]:
    """"L{l}.H{h}" -> (l, h), checked against the model's size."""
    m = _HEAD_RE.fullmatch(name)
    if not m:
        raise ValueError(f"bad head name {name!r}; expected 'L<layer>.H<head>' such as 'L9.H8'")
    l, h = int(m.group(1)), int(m.group(2))
    if not (0 <= l < n_layers and 0 <= h < n_heads):
        raise ValueError(f"head {name} is outside the model ({n_layers} layers x {n_heads} heads)")
    return l, h


def upstream_head_set(heads, n_layers: int, n_heads: int) -> tuple[list[tuple[int, int]], str | None]:
    """The head set of the upstream heads result and why it is missing (None when there is one)."""
    row = heads.read("head_sets", ["heads", "skipped_reason", "no_heads_reason"]).to_pylist()[0]
    return [parse_head(h, n_layers, n_heads) for h in row["heads"] or []], row["skipped_reason"] or row["no_heads_reason"]


@dataclass
class EndVectors:
    """Stored END vectors of the clean prompts for layers `first..L-1` (float32, index 0 = `first`)."""

    heads: np.ndarray  # [n, L', H, d]
    mlp: np.ndarray  # [n, L', d]
    resid_mid: np.ndarray  # [n, L', d] residual entering the MLP
    resid_post: np.ndarray  # [n, L', d]
    final_resid: np.ndarray  # [n, d]


def stored_end_vectors(capture, n: int, first: int, L: int, H: int, d: int, rtol: float = RESIDUAL_RTOL) -> EndVectors:
    """Read and check the END vectors of the first ``n`` clean prompts; the residual identity must hold
    for every prompt and layer within ``rtol`` times the largest residual entry."""
    keep = [("variant", "=", "clean"), ("prompt_id", "<", n), ("layer", ">=", first)]
    where = f"capture {capture.result_id}"
    t = capture.read("heads", ["prompt_id", "layer", "head", "output"], filters=keep)
    heads = np.full((n, L - first, H, d), np.nan, dtype=np.float32)
    heads[t["prompt_id"].to_numpy(), t["layer"].to_numpy() - first, t["head"].to_numpy()] = (
        t["output"].combine_chunks().flatten().to_numpy().reshape(len(t), d))
    t = capture.read("layers", ["prompt_id", "layer", "attn_bias", "mlp_out", "resid_pre", "resid_post"], filters=keep)
    idx = (t["prompt_id"].to_numpy(), t["layer"].to_numpy() - first)
    vec = {}
    for col in ("attn_bias", "mlp_out", "resid_pre", "resid_post"):
        arr = np.full((n, L - first, d), np.nan, dtype=np.float32)
        arr[idx] = t[col].combine_chunks().flatten().to_numpy().reshape(len(t), d)
        vec[col] = arr
    t = capture.read("resid_end", ["prompt_id", "final_resid"], filters=keep[:2])
    final = np.full((n, d), np.nan, dtype=np.float32)
    final[t["prompt_id"].to_numpy()] = t["final_resid"].combine_chunks().flatten().to_numpy().reshape(len(t), d)
    if np.isnan(heads).any() or np.isnan(vec["mlp_out"]).any() or np.isnan(final).any():
        raise StoreMismatchError(f"{where} does not cover every prompt and layer; rerun `factrecall capture`")
    attn = heads.astype(np.float64).sum(2) + vec["attn_bias"]
    rebuilt = vec["resid_pre"] + attn + vec["mlp_out"]
    err = np.abs(rebuilt - vec["resid_post"]).max()
    scale = max(1.0, float(np.abs(vec["resid_post"]).max()))
    if err > rtol * scale:
        raise StoreMismatchError(f"{where}: stored head and MLP outputs do not add up to the residual "
                                 f"(max error {err:.2e}); the capture is inconsistent, rerun `factrecall capture`")
    return EndVectors(heads, vec["mlp_out"], (vec["resid_post"] - vec["mlp_out"]), vec["resid_post"], final)


def _object_of(relation: Relation, subject: str) -> str:
    key = subject.casefold()
    return next(f.object for f in relation.facts if f.subject.casefold() == key)


def argument_swap(lm: LoadedModel, relation: Relation, clean: list[TokenizedPrompt],
                  twins: list[TokenizedPrompt], head_set: list[tuple[int, int]], batch_size: int,
                  seed: int = 0) -> dict:
    """Patch the head set's outputs at END from the twin prompt about X' (same template and
    demonstrations, another subject); record the top-1 before and after, and X''s answer token. The same
    swap from a random set of as many heads (drawn per prompt, seeded) gives the chance rate.

    `twins[i]` is clean[i]'s twin; with twins == clean nothing changes.
    """
    swap_prompts = [dataclasses.replace(t.prompt, object=_object_of(relation, t.prompt.query_subject)) for t in twins]
    swap_tokens = [p.answer_token_id for p in tokenize_prompts(lm.tokenizer, swap_prompts, lm.max_length)]
    n, L, H = len(clean), lm.dims.n_layers, lm.dims.n_heads
    rng = np.random.default_rng(seed)
    random_sets = [rng.choice(L * H, size=len(head_set), replace=False) for _ in range(n)]  # flat head indices
    out = {k: np.zeros(n, dtype=np.int64) for k in ("top1_before", "top1_after", "top1_random")}
    chosen = torch.zeros(L, H, dtype=torch.bool)
    for l, h in head_set:
        chosen[l, h] = True
    for idx, batch in length_sorted_batches(clean, batch_size):
        ids = [list(p.input_ids) for p in batch]
        cap = capture_batch(lm.model, lm.adapter, lm.dims, ids, lm.pad_id)
        twin = capture_batch(lm.model, lm.adapter, lm.dims, [list(twins[i].input_ids) for i in idx], lm.pad_id)
        diff = twin.head_raw - cap.head_raw  # [B, L, H, d]
        random_mask = torch.zeros(len(idx), L, H, dtype=torch.bool)
        for row, i in enumerate(idx):
            random_mask[row].view(-1)[torch.from_numpy(random_sets[i])] = True
        for key, mask in (("top1_after", chosen.expand(len(idx), L, H)), ("top1_random", random_mask)):
            m = mask.to(diff.device)
            edits = {("out_proj", l): (m[:, l, :, None] * diff[:, l]).sum(1) for l in range(L) if m[:, l].any()}
            out[key][idx] = end_logits_with_edits(lm, ids, edits).argmax(-1).cpu().numpy()
        out["top1_before"][idx] = cap.logits.argmax(-1).cpu().numpy()
    out["swap_token"] = np.array(swap_tokens)
    out["swap_subject"] = [t.prompt.query_subject for t in twins]
    out["swap_object"] = [p.object for p in swap_prompts]
    out["random_heads"] = [[f"L{k // H}.H{k % H}" for k in sorted(s)] for s in random_sets]
    return out


def swap_outcomes(swap: dict, answer: np.ndarray) -> dict[str, np.ndarray]:
    """Per prompt: ``eligible`` = the answer was top-1 before and X''s object was not (and they differ);
    ``success`` / ``chance`` = eligible and X''s object is top-1 after the head-set swap / the random swap;
    ``was_top1`` = the answer was top-1 before; ``stayed`` = it still is after the head-set swap."""
    before, token = swap["top1_before"], swap["swap_token"]
    was_top1 = before == answer
    eligible = was_top1 & (token != answer) & (before != token)
    return {"eligible": eligible, "success": eligible & (swap["top1_after"] == token),
            "chance": eligible & (swap["top1_random"] == token), "was_top1": was_top1,
            "stayed": was_top1 & (swap["top1_after"] == answer)}


def compute(inp: StageInput) -> Iterator[Rows]:
    lm, relation, shot, config = inp.lm, inp.relation, inp.shot, inp.config
    L, H, d = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model
    head_set, skipped = upstream_head_set(inp.upstream["heads"], L, H)
    if not head_set:
        reason = skipped or "the head set is empty: no layer to analyse"
        yield Rows({"function_application": [{"head_set": [], "layers": [], "skipped_reason": reason}]})
        return StageOutput({"skipped_reason": reason, "head_set": []})

    started = time.perf_counter()
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, shot, config.seed, max_prompts=config.max_prompts),
                             lm.max_length)
    twins = tokenize_prompts(lm.tokenizer, build_prompts(relation, shot, config.seed, ("subject_corrupt",),
                                                         config.max_prompts), lm.max_length)
    capture = inp.upstream["capture"]
    check_capture_prompts(capture, clean)
    n = len(clean)
    inp.progress(total=3 * n)
    first = min(l for l, _ in head_set)
    layers = list(range(first, L))
    vec = stored_end_vectors(capture, n, first, L, H, d, ledger_rtol(lm.dtype))
    answer = np.array([p.answer_token_id for p in clean])
    subject = np.array([p.subject_token_id for p in clean])
    per_layer = _regress_layers(lm, vec, layers, answer, subject)
    inp.progress(advance=n)
    push = per_layer["push"]  # [n, L']
    with np.errstate(invalid="ignore"):
        mean_push = np.array([np.nanmean(push[:, k]) if np.isfinite(push[:, k]).any() else np.nan
                              for k in range(len(layers))])
    best_k = int(np.nanargmax(mean_push)) if np.isfinite(mean_push).any() else None

    # causal check 1: remove c at END in the best layer
    removal = _remove_component(lm, clean, per_layer["c"][:, best_k] if best_k is not None else None,
                                layers[best_k] if best_k is not None else None, config.batch_size)
    inp.progress(advance=n)
    # causal check 2: argument swap with the twin about another subject
    swap = argument_swap(lm, relation, clean, twins, head_set, config.batch_size, config.seed)
    inp.progress(advance=n)

    tables = _tables(clean, layers, head_set, per_layer, best_k, removal, swap, config)
    fa = tables["function_application"][0]
    fa["seconds"] = time.perf_counter() - started
    yield Rows(tables)
    figures = _plots(inp.title, layers, head_set, tables)
    return StageOutput({"n_prompts": n, "head_set": fa["head_set"], "best_layer": fa["best_layer"],
                        "push": fa.get("push"), "swap_success": fa.get("swap_success"),
                        "removal_delta_p": fa.get("removal_delta_p")}, figures)


def _regress_layers(lm: LoadedModel, vec: EndVectors, layers: list[int], answer: np.ndarray,
                    subject: np.ndarray) -> dict:
    """Design A and B per layer, labels, "stands out" and the task-aware component's statistics."""
    runner = EndRunner(lm)
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    dev = lm.device
    n, Lp, H, d = vec.heads.shape
    sigma = norm_scale(torch.from_numpy(vec.final_resid).to(dev), norm.kind, norm.eps)
    objects = np.unique(answer)  # the relation's objects, as answer tokens in context
    ans_t, subj_t = torch.from_numpy(answer).to(dev), torch.from_numpy(subject).to(dev)
    keys = ("beta", "intercept", "r2", "rank", "singular", "pooled_beta", "pooled_r2", "pooled_rank",
            "pooled_singular", "c", "rank_before", "rank_after", "dla_subject_heads", "dla_subject_scaled",
            "c_rank", "c_dla_answer", "push", "c_cosine", "answer_rank_after")
    out = {k: [] for k in keys}
    for k, layer in enumerate(layers):
        o, m = vec.heads[:, k], vec.mlp[:, k]
        a, b = fit_per_prompt(o, m), fit_pooled(o, m)
        c = task_component(o, m, a.beta)  # [n, d] float64
        for name, value in (("beta", a.beta), ("intercept", a.intercept), ("r2", a.r2), ("rank", a.rank),
                            ("singular", a.singular), ("pooled_beta", b.beta), ("pooled_r2", b.r2),
                            ("pooled_rank", b.rank), ("pooled_singular", b.singular), ("c", c)):
            out[name].append(value)
        for name, resid in (("rank_before", vec.resid_mid[:, k]), ("rank_after", vec.resid_post[:, k])):
            logits = runner.logits(torch.from_numpy(resid).to(dev))
            out[name].append(token_stats(logits, subj_t).rank.cpu().numpy())
        out["answer_rank_after"].append(token_stats(logits, ans_t).rank.cpu().numpy())  # residual leaving the layer
        o_t = torch.from_numpy(o.astype(np.float64)).to(dev)
        beta_t = torch.from_numpy(np.nan_to_num(a.beta)).to(dev)
        both = torch.stack([o_t.sum(1), ((1 + beta_t)[:, :, None] * o_t).sum(1)], 1).float()  # [n, 2, d]
        dla = direct_logit_attribution(both, w_u[subj_t], norm.gain, sigma, norm.kind).cpu().numpy()
        scaled = np.where(a.singular, np.nan, dla[:, 1])
        out["dla_subject_heads"].append(dla[:, 0])
        out["dla_subject_scaled"].append(scaled)
        c_t = torch.from_numpy(np.nan_to_num(c)).float().to(dev)
        ranks = logit_lens_rank(c_t, ans_t, w_u, norm.gain, norm.kind).numpy().astype(np.float64)
        obj = torch.from_numpy(objects).to(dev)
        dla_obj = direct_logit_attribution(c_t[:, None].expand(-1, len(objects), -1).contiguous().reshape(n * len(objects), 1, d),
                                           w_u[obj].repeat(n, 1), norm.gain, sigma.repeat_interleave(len(objects)),
                                           norm.kind).reshape(n, len(objects)).double().cpu().numpy()
        own = objects[None, :] == answer[:, None]
        dla_y = (dla_obj * own).sum(1)
        others = (~own).sum(1)
        push = np.where(others > 0, dla_y - (dla_obj * ~own).sum(1) / np.maximum(others, 1), np.nan)
        cos = torch.nn.functional.cosine_similarity(c_t, w_u[ans_t].float(), dim=-1).double().cpu().numpy()
        bad = a.singular
        for name, value in (("c_rank", ranks), ("c_dla_answer", dla_y), ("push", push), ("c_cosine", cos)):
            out[name].append(np.where(bad, np.nan, value))
    # per-prompt values -> [n, L', ...]; pooled (design B) values -> [L', ...]
    return {k: np.stack(v, 0 if k.startswith("pooled") else 1) for k, v in out.items()}


def _remove_component(lm, clean, c: np.ndarray | None, layer: int | None, batch_size: int) -> dict | None:
    """p(answer) at END with the task-aware component c removed from layer `layer`'s MLP output."""
    if c is None:
        return None
    n = len(clean)
    res = {"p_before": np.full(n, np.nan), "p_after": np.full(n, np.nan)}
    ok = np.isfinite(c).all(1)
    for idx, batch in length_sorted_batches(clean, batch_size):
        ids = [list(p.input_ids) for p in batch]
        answer = torch.tensor([p.answer_token_id for p in batch], device=lm.device)
        vec = torch.from_numpy(np.nan_to_num(c[idx])).float()
        before = token_stats(end_logits_with_edits(lm, ids, {}), answer).prob.cpu().numpy()
        after = token_stats(end_logits_with_edits(lm, ids, {("mlp_out", layer): -vec}), answer).prob.cpu().numpy()
        res["p_before"][idx], res["p_after"][idx] = before, np.where(ok[idx], after, np.nan)
    res["ok"] = ok
    return res


def _tables(clean, layers, head_set, r: dict, best_k, removal, swap, config) -> dict:
    n, Lp, H = r["beta"].shape
    pid = np.array([p.prompt.prompt_id for p in clean], dtype=np.int32)
    in_set = {(l, h) for l, h in head_set}
    # per prompt x layer x head
    lay = np.repeat(np.array(layers), H)
    hd = np.tile(np.arange(H), Lp)
    betas = r["beta"].reshape(n, Lp * H)
    t_betas = {
        "prompt_id": np.repeat(pid, Lp * H), "layer": np.tile(lay, n).astype(np.int16),
        "head": np.tile(hd, n).astype(np.int16), "beta": betas.reshape(-1),
        "label": beta_label(betas.reshape(-1)),
        "in_head_set": np.tile([(int(l), int(h)) in in_set for l, h in zip(lay, hd)], n),
    }
    flat = lambda a: np.asarray(a, dtype=np.float64).reshape(-1)  # noqa: E731  [n, L'] -> rows (prompt, layer)
    t_prompts = {
        "prompt_id": np.repeat(pid, Lp), "layer": np.tile(layers, n).astype(np.int16),
        "intercept": flat(r["intercept"]), "r2": flat(r["r2"]), "rank": flat(r["rank"]).astype(np.int32),
        "singular": r["singular"].reshape(-1), "subject_rank_before": flat(r["rank_before"]).astype(np.int32),
        "subject_rank_after": flat(r["rank_after"]).astype(np.int32),
        "dla_subject_heads": flat(r["dla_subject_heads"]), "dla_subject_scaled": flat(r["dla_subject_scaled"]),
        "c_answer_rank": flat(r["c_rank"]), "c_dla_answer": flat(r["c_dla_answer"]), "c_push": flat(r["push"]),
        "c_cosine_answer": flat(r["c_cosine"]), "answer_rank_after": flat(r["answer_rank_after"]).astype(np.int32),
    }
    head_rows = []
    for k, layer in enumerate(layers):
        for h in range(H):
            b = r["beta"][:, k, h]
            b = b[np.isfinite(b)]
            row = {"layer": layer, "head": h, "n": len(b), "in_head_set": (layer, h) in in_set,
                   "pooled_beta": None if r["pooled_singular"][k] else float(r["pooled_beta"][k, h])}
            if len(b):
                row |= mean_ci_fields("mean_beta", b, config.n_boot, config.seed)
                q25, med, q75 = np.quantile(b, [0.25, 0.5, 0.75])
                row |= {"median_beta": float(med), "beta_q25": float(q25), "beta_q75": float(q75),
                        "share_erased": float((beta_label(b) == "erased").mean()),
                        "share_attenuated": float((beta_label(b) == "attenuated").mean()),
                        "share_amplified": float((beta_label(b) == "amplified").mean()),
                        "label": str(beta_label(np.array([med]))[0])}
            head_rows.append(row)
    layer_rows = []
    for k, layer in enumerate(layers):
        r2 = r["r2"][:, k]
        ok = np.isfinite(r2)
        row = {"layer": layer, "n": int(ok.sum()), "n_singular": int(r["singular"][:, k].sum()),
               "holds_head_set_head": any(l == layer for l, _ in head_set), "best_layer": k == best_k,
               "pooled_r2": None if r["pooled_singular"][k] else float(r["pooled_r2"][k]),
               "pooled_singular": bool(r["pooled_singular"][k])}
        if ok.any():
            q25, med, q75 = np.quantile(r2[ok], [0.25, 0.5, 0.75])
            row |= {"median_r2": float(med), "r2_q25": float(q25), "r2_q75": float(q75)}
            row |= mean_ci_fields("push", r["push"][:, k], config.n_boot, config.seed)
            ranks = r["c_rank"][:, k][ok]
            row |= {"answer_top1_share_in_c": float((ranks == 0).mean()),
                    "answer_top1_share_resid": float((r["answer_rank_after"][:, k] == 0).mean()), "median_answer_rank_in_c": float(np.median(ranks)),
                    "mean_cosine_answer": float(np.nanmean(r["c_cosine"][:, k])),
                    "median_subject_rank_before": float(np.median(r["rank_before"][:, k])),
                    "median_subject_rank_after": float(np.median(r["rank_after"][:, k])),
                    "mean_dla_subject_heads": float(np.mean(r["dla_subject_heads"][:, k])),
                    "mean_dla_subject_scaled": float(np.nanmean(r["dla_subject_scaled"][:, k]))}
        layer_rows.append(row)
    answer = np.array([p.answer_token_id for p in clean])
    o = swap_outcomes(swap, answer)
    t_swap = {
        "prompt_id": pid, "swap_subject": swap["swap_subject"], "swap_object": swap["swap_object"],
        "swap_token": swap["swap_token"].astype(np.int32), "answer_token": answer.astype(np.int32),
        "top1_before": swap["top1_before"].astype(np.int32), "top1_after": swap["top1_after"].astype(np.int32),
        "random_heads": swap["random_heads"], "top1_random": swap["top1_random"].astype(np.int32),
        "eligible": o["eligible"], "success": o["success"], "chance_success": o["chance"],
        "answer_was_top1": o["was_top1"], "stayed": o["stayed"],
    }
    best = layers[best_k] if best_k is not None else None
    appears = next((layers[k] for k, row in enumerate(layer_rows) if (row.get("answer_top1_share_in_c") or 0) >= 0.5),
                   None)
    resid_top1 = next((layers[k] for k, row in enumerate(layer_rows) if (row.get("answer_top1_share_resid") or 0) >= 0.5),
                      None)
    fa = {"head_set": [f"L{l}.H{h}" for l, h in head_set], "layers": layers, "n_prompts": n, "best_layer": best,
          "answer_appears_layer": appears, "residual_top1_layer": resid_top1}
    if best_k is not None:
        fa |= mean_ci_fields("push", r["push"][:, best_k], config.n_boot, config.seed)
        fa["push_n"] = int(np.isfinite(r["push"][:, best_k]).sum())
    if removal is not None:
        ok = removal["ok"]
        fa |= {"removal_n": int(ok.sum()), "removal_p_before": float(np.mean(removal["p_before"][ok])),
               "removal_p_after": float(np.mean(removal["p_after"][ok]))}
        fa |= mean_ci_fields("removal_delta_p", removal["p_after"][ok] - removal["p_before"][ok], config.n_boot, config.seed)
    eligible, was_top1 = o["eligible"], o["was_top1"]
    fa |= {"swap_n": int(eligible.sum()), "swap_stayed_n": int(was_top1.sum())}
    fa |= mean_ci_fields("swap_success", o["success"][eligible].astype(float), config.n_boot, config.seed)
    fa |= mean_ci_fields("swap_chance", o["chance"][eligible].astype(float), config.n_boot, config.seed)
    fa |= mean_ci_fields("swap_stayed", o["stayed"][was_top1].astype(float), config.n_boot, config.seed)
    head_layers = sorted({l for l, _ in head_set})
    hl = [k for k, l in enumerate(layers) if l in head_layers]
    med = [layer_rows[k].get("median_r2") for k in hl]
    fa["share_head_layers_r2_ge_half"] = float(np.mean([m is not None and m >= 0.5 for m in med])) if hl else None
    set_labels = [row.get("label") for row in head_rows if row["in_head_set"]]
    fa["share_set_heads_amplified"] = (float(np.mean([lab == "amplified" for lab in set_labels]))
                                       if set_labels else None)
    return {"regression_betas": t_betas, "regression_prompts": t_prompts, "regression_heads": head_rows,
            "regression_layers": layer_rows, "argument_swap": t_swap, "function_application": [fa]}


BETA_PLOT_HEADS = 24  # heads shown by name in the β plot; the rest are summarised in one bar


def beta_plot(rows: list[dict], title: str, top: int = BETA_PLOT_HEADS) -> bytes:
    """β per head (regression_heads rows): the head-set heads and the others with the largest |mean β|, up
    to ``top`` bars, then one bar for every other head (the median of their mean β, interquartile range
    as its interval), so the figure stays readable whatever the number of heads."""
    nz = lambda v: np.nan if v is None else v  # noqa: E731
    strength = lambda h: (not h["in_head_set"], -abs(nz(h.get("mean_beta")) if h.get("mean_beta") is not None else 0))  # noqa: E731
    shown = sorted(sorted(rows, key=strength)[:top], key=lambda h: (h["layer"], h["head"]))
    rest = [h for h in rows if h not in shown and h.get("mean_beta") is not None]
    cats = [f"L{h['layer']}.H{h['head']}" + ("*" if h["in_head_set"] else "") for h in shown]
    a = {k: [nz(h.get(k)) for h in shown] for k in ("mean_beta", "mean_beta_lo", "mean_beta_hi")}
    b = [nz(h["pooled_beta"]) for h in shown]
    if rest:
        q25, med, q75 = np.quantile([h["mean_beta"] for h in rest], [0.25, 0.5, 0.75])
        cats.append(f"other {len(rest)}\n(median, IQR)")
        a = {"mean_beta": a["mean_beta"] + [med], "mean_beta_lo": a["mean_beta_lo"] + [q25],
             "mean_beta_hi": a["mean_beta_hi"] + [q75]}
        b.append(np.nan)
    return plots.bars(
        cats, {"mean β (design A)": tuple(np.array(a[k], dtype=float) for k in ("mean_beta", "mean_beta_lo", "mean_beta_hi")),
               "β (design B)": tuple(np.array(b, dtype=float) for _ in range(3))},
        f"MLP over the head layer's heads: β per head (95% interval; * = head set)\n{title}",
        ylabel="β (−1 erases, > 0 amplifies)")


def _plots(title, layers, head_set, tables) -> dict[str, bytes]:
    """beta per head of the head layers (bars with intervals), R^2 by layer, push by layer."""
    heads = tables["regression_heads"]
    head_layers = sorted({l for l, _ in head_set})
    figures = {"beta_by_head": beta_plot([h for h in heads if h["layer"] in head_layers], title)}
    nz = lambda v: np.nan if v is None else v  # noqa: E731
    lrows = tables["regression_layers"]
    x = np.array(layers)
    arr = lambda k: np.array([nz(row.get(k)) for row in lrows], dtype=float)  # noqa: E731
    pooled = arr("pooled_r2")
    figures["r2_by_layer"] = plots.bands(
        x, {"design A: median R² (interquartile band)": (arr("median_r2"), arr("r2_q25"), arr("r2_q75")),
            "design B: pooled R²": (pooled, pooled, pooled)},
        f"R² of the MLP output on the layer's heads\n{title}", ylabel="R²")
    figures["push_by_layer"] = plots.bands(
        x, {"push of c toward the answer (95% interval)": (arr("push"), arr("push_lo"), arr("push_hi"))},
        f"answer-specific push of the task-aware component c\n{title}",
        ylabel="DLA(c, answer) − mean DLA(c, other objects)")
    return figures


def model_swap_plot(con, model: str) -> bytes | None:
    """Argument-swap success rate by relation (and shot) for one model over the current "mlp" results
    (``con``: a store connection)."""
    from factrecall.storage.query import internal_query

    rows = con.execute(internal_query("swap_by_relation"), {"model": model}).fetchall()
    if not rows:
        return None
    relations = sorted({r[0] for r in rows})
    groups = {}
    for shot in sorted({r[1] for r in rows}):
        by = {r[0]: r for r in rows if r[1] == shot}
        groups[f"shot {shot}"] = tuple(np.array([by[rel][i] if rel in by and by[rel][i] is not None else np.nan
                                                 for rel in relations], dtype=float) for i in (2, 3, 4))
    return plots.bars(relations, groups, f"{model}: argument swap success rate (95% interval)",
                      ylabel="share of prompts predicting X′'s object")
