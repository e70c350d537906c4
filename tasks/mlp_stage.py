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
from .end_edits import end_logits_with_edits, top1_after_end, z_after_end
from .head_stats import logit_lens_rank
from .heads_stage import HeadsConfig
from .intervals import mean_ci_fields, wilson_interval
from .ledger import direct_logit_attribution, ledger_rtol, norm_scale
from .logit_lens import token_stats
from .mlp_regression import (
    beta_label,
    fit_per_prompt,
    fit_pooled,
    pooled_bootstrap,
    push_against_null,
    task_component,
)
from .models import LoadedModel
from .path_patching import EndRunner
from .prompts import build_prompts
from .readout import final_norm_of, unembedding
from .relations import Relation
from .stage_api import Rows, StageInput, StageOutput
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts
from .upstream_checks import StoreMismatchError, check_capture_prompts, correct_prompts

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


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def argument_swap(lm: LoadedModel, relation: Relation, clean: list[TokenizedPrompt],
                  twins: list[TokenizedPrompt], head_set: list[tuple[int, int]], batch_size: int,
                  seed: int = 0) -> dict:
    """The argument swap by replacement (METHOD.md §6): every head-set head's z at END set to its value in the twin
    prompt's run (X' instead of X; same template and demonstrations), later layers recomputed, so each set head's
    output at END is exactly its twin-run output. The same from a random set of as many heads (drawn per prompt,
    seeded) gives the chance rate.

    The prediction is read at the *decision token*: the first token where X's and X''s objects differ, after
    their common prefix of k tokens fed as given (k = 0 when their first tokens differ: the first token); the set
    heads are replaced at END and at each of those k positions, by their values in the twin's run with the same
    prefix fed after it. ``decision`` is k (-1: one object's tokens are a prefix of the other's, undecidable);
    ``top1_*`` are `[n, k+1]`-long lists of top-1 tokens at END .. END + k before, after the set swap and after the
    random swap.
    `twins[i]` is clean[i]'s twin; with twins == clean nothing changes.
    """
    swap_prompts = [dataclasses.replace(c.prompt, object=_object_of(relation, t.prompt.query_subject))
                    for c, t in zip(clean, twins)]
    swapped = tokenize_prompts(lm.tokenizer, swap_prompts, lm.max_length)
    n, L, H, dh = len(clean), lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head
    rng = np.random.default_rng(seed)
    random_sets = [rng.choice(L * H, size=len(head_set), replace=False) for _ in range(n)]  # flat head indices
    chosen = torch.zeros(L, H, dtype=torch.bool)
    for l, h in head_set:
        chosen[l, h] = True
    decision = np.full(n, -1, dtype=np.int64)
    for i, (c, x) in enumerate(zip(clean, swapped)):
        k = _common_prefix(c.object_token_ids, x.object_token_ids)
        if k < min(len(c.object_token_ids), len(x.object_token_ids)):
            decision[i] = k
    out = {key: [None] * n for key in ("top1_before", "top1_after", "top1_random")}
    for idx, batch in length_sorted_batches(clean, batch_size):
        k = [max(0, int(decision[i])) for i in idx]
        K = max(k) + 1
        prefix = [list(p.object_token_ids[: k[j]]) for j, p in enumerate(batch)]  # the objects' common prefix
        seqs = [list(p.input_ids) + prefix[j] for j, p in enumerate(batch)]
        end = [p.end_pos for p in batch]
        # the twin's heads at END and at each token of the common prefix, the prefix fed after the twin prompt
        z_twin = z_after_end(lm, [list(twins[i].input_ids) + prefix[j] for j, i in enumerate(idx)],
                             [twins[i].end_pos for i in idx], K).reshape(len(idx), K, L, H, dh)
        random_mask = torch.zeros(len(idx), L, H, dtype=torch.bool)
        for row, i in enumerate(idx):
            random_mask[row].view(-1)[torch.from_numpy(random_sets[i])] = True
        for key, mask in (("top1_before", None), ("top1_after", chosen.expand(len(idx), L, H)),
                          ("top1_random", random_mask)):
            replace = {} if mask is None else {l: (z_twin[:, :, l], mask[:, l]) for l in range(L) if mask[:, l].any()}
            top = top1_after_end(lm, seqs, end, replace=replace).cpu().numpy()
            for row, i in enumerate(idx):
                out[key][i] = top[row, : k[row] + 1].tolist()
    out["decision"] = decision
    out["object_tokens"] = [list(c.object_token_ids) for c in clean]
    out["swap_object_tokens"] = [list(x.object_token_ids) for x in swapped]
    out["swap_subject"] = [t.prompt.query_subject for t in twins]
    out["swap_object"] = [p.object for p in swap_prompts]
    out["twin_answer_in_subject"] = np.array([x.object_token_ids[0] in t.input_ids[t.s_first_pos : t.s_pos + 1]
                                              for x, t in zip(swapped, twins)])
    out["random_heads"] = [[f"L{k // H}.H{k % H}" for k in sorted(s)] for s in random_sets]
    return out


def swap_outcomes(swap: dict, answer_in_subject: np.ndarray) -> dict[str, np.ndarray]:
    """Per prompt (METHOD.md §6): ``eligible`` = the objects differ at a decision token, the model's greedy path
    before the swap is X's object up to and including it (so X' was not chosen), and neither prompt's answer is
    one of its subject tokens (copying the subject would score as answering); ``success`` / ``chance`` = eligible
    and the path after the head-set swap / the random swap keeps the common prefix and then takes X''s decision
    token; ``was_top1`` = X's first token was top-1 before; ``stayed`` = and still is after the head-set swap."""
    n = len(swap["decision"])
    out = {k: np.zeros(n, dtype=bool) for k in ("eligible", "success", "chance", "was_top1", "stayed", "excluded")}
    for i in range(n):
        x, y, k = swap["object_tokens"][i], swap["swap_object_tokens"][i], int(swap["decision"][i])
        before, after, rand = swap["top1_before"][i], swap["top1_after"][i], swap["top1_random"][i]
        out["was_top1"][i] = before[0] == x[0]
        out["stayed"][i] = out["was_top1"][i] and after[0] == x[0]
        out["excluded"][i] = bool(answer_in_subject[i] or swap["twin_answer_in_subject"][i])
        if k < 0 or out["excluded"][i] or before != list(x[: k + 1]):
            continue
        out["eligible"][i] = True
        out["success"][i] = after == list(y[: k + 1])
        out["chance"][i] = rand == list(y[: k + 1])
    return out


def _dla_onto(vectors: np.ndarray, w_tokens: torch.Tensor, gain: torch.Tensor, sigma: torch.Tensor,
              kind: str) -> np.ndarray:
    """DLA `[n, K]` of `vectors [n, d]` onto K tokens (`w_tokens [K, d]` unembedding rows), each row at its own
    final-norm scale `sigma [n]` (METHOD.md §2), in float64."""
    v = torch.from_numpy(np.nan_to_num(np.asarray(vectors, dtype=np.float64))).to(gain.device)
    if kind == "layernorm":
        v = v - v.mean(-1, keepdim=True)
    out = ((v * gain.double()) @ w_tokens.double().T) / sigma.double()[:, None]
    return out.cpu().numpy()


def split_halves(mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded half split of the prompts in ``mask`` `[n]`: (half A, half B) bool masks; A has the extra prompt
    when their number is odd."""
    idx = np.flatnonzero(mask)
    perm = np.random.default_rng(seed).permutation(idx)
    cal = np.zeros(len(mask), dtype=bool)
    cal[perm[: (len(perm) + 1) // 2]] = True
    return cal, mask & ~cal


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
    judged = correct_prompts(capture, n)
    in_subject = np.array([p.answer_in_subject for p in clean])
    splits = {"judged": split_halves(judged, config.seed), "all": split_halves(np.ones(n, dtype=bool), config.seed)}
    per_layer = _regress_layers(lm, vec, layers, answer, subject, judged, splits, config)
    inp.progress(advance=n)
    # each half chooses its layer on its own fit; the other half is judged there (2-fold cross-fitting)
    best = {key: (_best_layer(per_layer[key]["d_in_a"], splits[key][0]),
                  _best_layer(per_layer[key]["d_in_b"], splits[key][1])) for key in splits}
    chosen = {key: _layer_of_prompt(best[key], splits[key]) for key in splits}  # [n] layer index judged at, or -1

    # causal check 1: remove each prompt's out-of-fold c at END in the layer its other half chose
    removal = _remove_component(lm, clean, per_layer["judged"]["c"], chosen["judged"], layers, config.batch_size)
    inp.progress(advance=n)
    # causal check 2: argument swap (replacement) with the twin about another subject
    swap = argument_swap(lm, relation, clean, twins, head_set, config.batch_size, config.seed)
    inp.progress(advance=n)

    tables = _tables(clean, layers, head_set, per_layer, best, chosen, removal, swap, judged, in_subject, splits,
                     config)
    fa = tables["function_application"][0]
    fa["seconds"] = time.perf_counter() - started
    yield Rows(tables)
    figures = _plots(inp.title, layers, head_set, tables)
    return StageOutput({"n_prompts": n, "n_correct": int(judged.sum()), "head_set": fa["head_set"],
                        "best_layer": fa["best_layer"], "push": fa.get("push"), "swap_success": fa.get("swap_success"),
                        "removal_delta_p": fa.get("removal_delta_p")}, figures)


def _best_layer(d: np.ndarray, half: np.ndarray) -> int | None:
    """Index of the layer with the largest mean null-adjusted push `d [n, L']` over the prompts of ``half``."""
    if not half.any():
        return None
    with np.errstate(invalid="ignore"):
        means = np.array([np.nanmean(d[half, k]) if np.isfinite(d[half, k]).any() else np.nan
                          for k in range(d.shape[1])])
    return int(np.nanargmax(means)) if np.isfinite(means).any() else None


def _layer_of_prompt(best: tuple[int | None, int | None], split: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`[n]` the layer index each prompt is judged at: a prompt of half B at half A's choice and vice versa (a prompt
    outside both halves at A's choice); -1 where that half chose none."""
    a, b = split
    la, lb = (-1 if x is None else x for x in best)
    return np.where(a, lb, la).astype(np.int64)


def _regress_layers(lm: LoadedModel, vec: EndVectors, layers: list[int], answer: np.ndarray, subject: np.ndarray,
                    judged: np.ndarray, splits: dict, config) -> dict:
    """Per layer: design A (every prompt; secondary), design B on the judged prompts with bootstrap intervals and
    its shuffled-prompt null (primary), design B on every prompt, the subject's standing before and after the MLP,
    and the task-aware component c = m - sum_h beta_B o cross-fitted over two halves of the prompts: a prompt of
    half A gets c from half B's fit and vice versa (out of fold; a prompt in neither half, A's), read through the
    logit lens with its answer-specific push and the push's shuffled-prompt null (METHOD.md §5-6). The same push is
    computed for the MLP output m and for design B's shared intercept (out of fold). ``d_in_a``/``d_in_b`` are the
    null-adjusted pushes of each half's own fit (they choose each half's layer). Keys "judged" and "all" hold the
    component analysis per prompt set."""
    runner = EndRunner(lm)
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    dev = lm.device
    n, Lp, H, d = vec.heads.shape
    sigma = norm_scale(torch.from_numpy(vec.final_resid).to(dev), norm.kind, norm.eps)
    objects = np.unique(answer)  # the relation's objects, as answer tokens in context
    answer_index = np.searchsorted(objects, answer)
    w_obj = w_u[torch.from_numpy(objects).to(dev)]
    ans_t, subj_t = torch.from_numpy(answer).to(dev), torch.from_numpy(subject).to(dev)
    nj = int(judged.sum())
    out = {k: [] for k in ("beta", "intercept", "r2", "rank", "singular", "rank_before", "rank_after",
                           "dla_subject_heads", "dla_subject_scaled", "answer_rank_after")}
    pooled = []  # per layer: PooledBootstrap on the judged prompts (None below 2 judged prompts)
    pooled_all = []
    comp = {key: {k: [] for k in ("c", "c_rank", "c_dla_answer", "c_cosine", "push_c", "null_c", "d_c", "push_m",
                                  "null_m", "d_m", "d_b", "d_in_a", "d_in_b")} for key in splits}

    def push(vectors):
        return push_against_null(_dla_onto(vectors, w_obj, norm.gain, sigma, norm.kind), answer_index)

    for k, layer in enumerate(layers):
        o, m = vec.heads[:, k], vec.mlp[:, k]
        a = fit_per_prompt(o, m)
        for name, value in (("beta", a.beta), ("intercept", a.intercept), ("r2", a.r2), ("rank", a.rank),
                            ("singular", a.singular)):
            out[name].append(value)
        boot = pooled_bootstrap(o[judged], m[judged], config.n_boot, config.seed) if nj >= 2 else None
        pooled.append(boot)
        pooled_all.append(fit_pooled(o, m))
        for name, resid in (("rank_before", vec.resid_mid[:, k]), ("rank_after", vec.resid_post[:, k])):
            logits = runner.logits(torch.from_numpy(resid).to(dev))
            out[name].append(token_stats(logits, subj_t).rank.cpu().numpy())
        out["answer_rank_after"].append(token_stats(logits, ans_t).rank.cpu().numpy())  # residual leaving the layer
        o_t = torch.from_numpy(o.astype(np.float64)).to(dev)
        beta_b = boot.fit.beta if boot is not None and not boot.fit.singular else np.full(H, np.nan)
        beta_t = torch.from_numpy(np.nan_to_num(beta_b)).to(dev)
        both = torch.stack([o_t.sum(1), ((1 + beta_t)[None, :, None] * o_t).sum(1)], 1).float()  # [n, 2, d]
        dla = direct_logit_attribution(both, w_u[subj_t], norm.gain, sigma, norm.kind).cpu().numpy()
        out["dla_subject_heads"].append(dla[:, 0])
        out["dla_subject_scaled"].append(np.where(np.isfinite(beta_b).all(), dla[:, 1], np.nan))
        p_m, null_m = push(m)
        for key, (half_a, half_b) in splits.items():
            fits = [fit_pooled(o[h], m[h]) if h.sum() >= 2 else None for h in (half_a, half_b)]
            cs, bs = [], []
            for fit in fits:
                ok = fit is not None and not fit.singular
                cs.append(task_component(o, m, fit.beta) if ok else np.full((n, d), np.nan))
                bs.append(np.broadcast_to(fit.intercept, (n, d)) if ok else np.full((n, d), np.nan))
            for name, c_own in (("d_in_a", cs[0]), ("d_in_b", cs[1])):
                p_own, null_own = push(c_own)  # a singular half has no c: NaN, never a push of 0 to choose
                comp[key][name].append(np.where(np.isfinite(c_own).all(1), p_own - null_own, np.nan))
            other = half_a[:, None]  # out of fold: half A's prompts take half B's fit, every other prompt half A's
            c = np.where(other, cs[1], cs[0])
            p_c, null_c = push(c)
            p_b, null_b = push(np.ascontiguousarray(np.where(other, bs[1], bs[0])))
            c_t = torch.from_numpy(np.nan_to_num(c)).float().to(dev)
            ranks = logit_lens_rank(c_t, ans_t, w_u, norm.gain, norm.kind).numpy().astype(np.float64)
            cos = torch.nn.functional.cosine_similarity(c_t, w_u[ans_t].float(), dim=-1).double().cpu().numpy()
            w_y = (norm.gain.double()[None, :] * w_u[ans_t].double()).cpu().numpy()  # [n, d]
            dla_y = np.einsum("nd,nd->n", _centered(c, norm), w_y) / sigma.double().cpu().numpy()
            bad = ~np.isfinite(c).all(1)
            for name, value in (("c_rank", ranks), ("c_dla_answer", dla_y), ("c_cosine", cos), ("push_c", p_c),
                                ("null_c", null_c), ("d_c", p_c - null_c), ("d_b", p_b - null_b)):
                comp[key][name].append(np.where(bad, np.nan, value))
            for name, value in (("c", c), ("push_m", p_m), ("null_m", null_m), ("d_m", p_m - null_m)):
                comp[key][name].append(value)
    res = {k: np.stack(v, 1) for k, v in out.items()}  # [n, L', ...]
    res["pooled"], res["pooled_all"] = pooled, pooled_all
    for key in splits:
        res[key] = {k: np.stack(v, 1) for k, v in comp[key].items()}
    return res


def _centered(vectors: np.ndarray, norm) -> np.ndarray:
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    return v - v.mean(-1, keepdims=True) if norm.kind == "layernorm" else v


def _remove_component(lm, clean, c: np.ndarray, chosen: np.ndarray, layers: list[int], batch_size: int) -> dict | None:
    """p(answer) at END with each prompt's task-aware component `c [n, L', d]` removed from the MLP output of the
    layer it is judged at (`chosen [n]`, an index into ``layers``; -1: not removed, NaN)."""
    if (chosen < 0).all():
        return None
    n = len(clean)
    rows = np.arange(n)
    vec_all = c[rows, np.maximum(chosen, 0)]  # [n, d]
    ok = (chosen >= 0) & np.isfinite(vec_all).all(1)
    res = {"p_before": np.full(n, np.nan), "p_after": np.full(n, np.nan), "ok": ok}
    for idx, batch in length_sorted_batches(clean, batch_size):
        ids = [list(p.input_ids) for p in batch]
        answer = torch.tensor([p.answer_token_id for p in batch], device=lm.device)
        vec = torch.from_numpy(np.where(ok[idx, None], np.nan_to_num(vec_all[idx]), 0.0)).float()
        edits = {}
        for k in sorted({int(chosen[i]) for i in idx if ok[i]}):
            at = torch.tensor([bool(ok[i] and chosen[i] == k) for i in idx])
            edits[("mlp_out", layers[k])] = -vec * at[:, None]
        before = token_stats(end_logits_with_edits(lm, ids, {}), answer).prob.cpu().numpy()
        after = token_stats(end_logits_with_edits(lm, ids, edits), answer).prob.cpu().numpy()
        res["p_before"][idx], res["p_after"][idx] = before, np.where(ok[idx], after, np.nan)
    return res


def _ci(prefix: str, values, config) -> dict:
    return mean_ci_fields(prefix, values, config.n_boot, config.seed)


def _quantile(x: np.ndarray, q: float) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if len(x) else None


def _tables(clean, layers, head_set, r: dict, best: dict, chosen: dict, removal, swap, judged, in_subject, splits,
            config) -> dict:
    n, Lp, H = r["beta"].shape
    pid = np.array([p.prompt.prompt_id for p in clean], dtype=np.int32)
    in_set = {(l, h) for l, h in head_set}
    half_a, half_b = splits["judged"]
    split = np.where(half_a, "a", np.where(half_b, "b", None))
    # per prompt x layer x head (design A, every prompt)
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
    j = r["judged"]
    t_prompts = {
        "prompt_id": np.repeat(pid, Lp), "layer": np.tile(layers, n).astype(np.int16),
        "correct": np.repeat(judged, Lp), "split": np.repeat(split, Lp),
        "intercept": flat(r["intercept"]), "r2": flat(r["r2"]), "rank": flat(r["rank"]).astype(np.int32),
        "singular": r["singular"].reshape(-1), "subject_rank_before": flat(r["rank_before"]).astype(np.int32),
        "subject_rank_after": flat(r["rank_after"]).astype(np.int32),
        "dla_subject_heads": flat(r["dla_subject_heads"]), "dla_subject_scaled": flat(r["dla_subject_scaled"]),
        "c_answer_rank": flat(j["c_rank"]), "c_dla_answer": flat(j["c_dla_answer"]), "c_push": flat(j["push_c"]),
        "c_push_null": flat(j["null_c"]), "mlp_push": flat(j["push_m"]), "mlp_push_null": flat(j["null_m"]),
        "c_cosine_answer": flat(j["c_cosine"]), "answer_rank_after": flat(r["answer_rank_after"]).astype(np.int32),
    }
    head_rows = []
    for k, layer in enumerate(layers):
        boot = r["pooled"][k]
        ok = boot is not None and not boot.fit.singular
        se = np.nanstd(boot.beta_draws, 0, ddof=1) if ok else np.full(H, np.nan)
        for h in range(H):
            b = r["beta"][:, k, h]
            b = b[np.isfinite(b)]
            row = {"layer": layer, "head": h, "n": len(b), "in_head_set": (layer, h) in in_set,
                   "pooled_beta": float(boot.fit.beta[h]) if ok else None,
                   "pooled_beta_se": float(se[h]) if ok else None,
                   "pooled_beta_lo": _quantile(boot.beta_draws[:, h], 0.025) if ok else None,
                   "pooled_beta_hi": _quantile(boot.beta_draws[:, h], 0.975) if ok else None,
                   "pooled_label": str(beta_label(np.array([boot.fit.beta[h]]))[0]) if ok else None,
                   "pooled_beta_all": None if r["pooled_all"][k].singular else float(r["pooled_all"][k].beta[h])}
            if len(b):
                row |= mean_ci_fields("mean_beta", b, config.n_boot, config.seed)
                q25, med, q75 = np.quantile(b, [0.25, 0.5, 0.75])
                labels = beta_label(b)
                row |= {"median_beta": float(med), "beta_q25": float(q25), "beta_q75": float(q75),
                        "share_reversed": float((labels == "reversed").mean()),
                        "share_erased": float((labels == "erased").mean()),
                        "share_attenuated": float((labels == "attenuated").mean()),
                        "share_amplified": float((labels == "amplified").mean()),
                        "label": str(beta_label(np.array([med]))[0])}
            head_rows.append(row)
    layer_rows = []
    for k, layer in enumerate(layers):
        r2 = r["r2"][:, k]
        ok = np.isfinite(r2)
        boot = r["pooled"][k]
        b_ok = boot is not None and not boot.fit.singular
        row = {"layer": layer, "n": int(ok.sum()), "n_singular": int(r["singular"][:, k].sum()),
               "n_judged": int(judged.sum()),
               "holds_head_set_head": any(l == layer for l, _ in head_set),
               "best_layer": k == best["judged"][0], "best_layer_b": k == best["judged"][1],
               "pooled_r2": float(boot.fit.r2) if b_ok else None,
               "pooled_r2_lo": _quantile(boot.r2_draws, 0.025) if b_ok else None,
               "pooled_r2_hi": _quantile(boot.r2_draws, 0.975) if b_ok else None,
               "pooled_r2_null": float(np.nanmean(boot.null_r2)) if b_ok else None,
               "pooled_r2_null_q95": _quantile(boot.null_r2, 0.95) if b_ok else None,
               "pooled_singular": not b_ok,
               "pooled_r2_all": None if r["pooled_all"][k].singular else float(r["pooled_all"][k].r2)}
        if ok.any():
            q25, med, q75 = np.quantile(r2[ok], [0.25, 0.5, 0.75])
            row |= {"median_r2": float(med), "r2_q25": float(q25), "r2_q75": float(q75)}
        row |= _ci("push", j["d_c"][judged, k], config)
        row |= _ci("push_in_a", j["d_in_a"][half_a, k], config)
        row |= _ci("push_in_b", j["d_in_b"][half_b, k], config)
        row |= _ci("push_mlp", j["d_m"][judged, k], config)
        ranks = j["c_rank"][judged, k]
        if judged.any():
            row |= {"answer_top1_share_in_c": float(np.mean(ranks == 0)),
                    "answer_top1_share_resid": float((r["answer_rank_after"][judged, k] == 0).mean()),
                    "median_answer_rank_in_c": _quantile(ranks, 0.5),
                    "mean_cosine_answer": float(np.nanmean(j["c_cosine"][judged, k])),
                    "median_subject_rank_before": float(np.median(r["rank_before"][judged, k])),
                    "median_subject_rank_after": float(np.median(r["rank_after"][judged, k])),
                    "mean_dla_subject_heads": float(np.mean(r["dla_subject_heads"][judged, k])),
                    "mean_dla_subject_scaled": float(np.nanmean(r["dla_subject_scaled"][judged, k]))}
        layer_rows.append(row)
    answer = np.array([p.answer_token_id for p in clean])
    o = swap_outcomes(swap, in_subject)
    first = lambda key: np.array([t[0] for t in swap[key]], dtype=np.int32)  # noqa: E731
    decision_top = lambda key: np.array([t[-1] for t in swap[key]], dtype=np.int32)  # noqa: E731
    dec = swap["decision"]
    t_swap = {
        "prompt_id": pid, "swap_subject": swap["swap_subject"], "swap_object": swap["swap_object"],
        "swap_token": np.array([t[max(int(k), 0)] if k >= 0 else t[0] for t, k in zip(swap["swap_object_tokens"], dec)],
                               dtype=np.int32),
        "answer_token": np.array([t[max(int(k), 0)] if k >= 0 else t[0] for t, k in zip(swap["object_tokens"], dec)],
                                 dtype=np.int32),
        "decision_offset": dec.astype(np.int32),
        "top1_before": decision_top("top1_before"), "top1_after": decision_top("top1_after"),
        "random_heads": swap["random_heads"], "top1_random": decision_top("top1_random"),
        "first_top1_before": first("top1_before"), "first_top1_after": first("top1_after"),
        "eligible": o["eligible"], "success": o["success"], "chance_success": o["chance"],
        "excluded_answer_in_subject": o["excluded"],
        "answer_was_top1": o["was_top1"], "stayed": o["stayed"],
    }
    head_layers = sorted({l for l, _ in head_set})
    hl = [k for k, l in enumerate(layers) if l in head_layers]
    (bj, bj_b), (ba, _) = best["judged"], best["all"]
    fa = {"head_set": [f"L{l}.H{h}" for l, h in head_set], "layers": layers, "n_prompts": n,
          "n_correct": int(judged.sum()), "best_layer": layers[bj] if bj is not None else None,
          "best_layer_b": layers[bj_b] if bj_b is not None else None,
          "best_layer_all": layers[ba] if ba is not None else None}
    appears = next((layers[k] for k, row in enumerate(layer_rows) if (row.get("answer_top1_share_in_c") or 0) >= 0.5),
                   None)
    resid_top1 = next((layers[k] for k, row in enumerate(layer_rows) if (row.get("answer_top1_share_resid") or 0) >= 0.5),
                      None)
    fa |= {"answer_appears_layer": appears, "residual_top1_layer": resid_top1}
    # step 2, design B at the head-set layers: R^2 averaged over those layers (its bootstrap draws and null draws
    # averaged draw by draw), on the judged prompts; and on every prompt beside it
    boots = [r["pooled"][k] for k in hl if r["pooled"][k] is not None and not r["pooled"][k].fit.singular]
    if boots and len(boots) == len(hl):
        draws = np.mean([b.r2_draws for b in boots], 0)
        null = np.mean([b.null_r2 for b in boots], 0)
        fa |= {"pooled_r2": float(np.mean([b.fit.r2 for b in boots])), "pooled_r2_lo": _quantile(draws, 0.025),
               "pooled_r2_hi": _quantile(draws, 0.975), "pooled_r2_null": float(np.nanmean(null)),
               "pooled_r2_null_q95": _quantile(null, 0.95), "pooled_r2_n": int(judged.sum())}
    alls = [r["pooled_all"][k] for k in hl]
    if alls and not any(f.singular for f in alls):
        fa["pooled_r2_all"] = float(np.mean([f.r2 for f in alls]))
    # step 3: each prompt's out-of-fold component at the layer its other half chose (2-fold cross-fitting)
    def at_chosen(values: np.ndarray, key: str, keep: np.ndarray) -> np.ndarray:
        layer = chosen[key]
        take = keep & (layer >= 0)
        return values[np.flatnonzero(take), layer[take]]

    if (chosen["judged"][judged] >= 0).any():
        fa |= _ci("push", at_chosen(j["d_c"], "judged", judged), config)
        fa["push_n"] = int(np.isfinite(at_chosen(j["d_c"], "judged", judged)).sum())
        fa |= _ci("push_mlp", at_chosen(j["d_m"], "judged", judged), config)
        fa |= _ci("push_intercept", at_chosen(j["d_b"], "judged", judged), config)
        fa["push_raw"] = _finite_mean(at_chosen(j["push_c"], "judged", judged))
        fa["push_null"] = _finite_mean(at_chosen(j["null_c"], "judged", judged))
    everyone = np.ones(n, dtype=bool)
    if (chosen["all"] >= 0).any():
        fa |= _ci("push_all", at_chosen(r["all"]["d_c"], "all", everyone), config)
        fa["push_all_n"] = int(np.isfinite(at_chosen(r["all"]["d_c"], "all", everyone)).sum())
    if removal is not None:
        ok = removal["ok"] & judged
        fa |= {"removal_n": int(ok.sum()),
               "removal_p_before": _finite_mean(removal["p_before"][ok]),
               "removal_p_after": _finite_mean(removal["p_after"][ok])}
        fa |= _ci("removal_delta_p", removal["p_after"][ok] - removal["p_before"][ok], config)
    eligible, was_top1 = o["eligible"], o["was_top1"]
    k_s, k_c, n_e = int(o["success"].sum()), int(o["chance"].sum()), int(eligible.sum())
    fa |= {"swap_n": n_e, "swap_stayed_n": int(was_top1.sum()), "swap_excluded_n": int(o["excluded"].sum()),
           "swap_undecidable_n": int((dec < 0).sum()),
           "swap_success": k_s / n_e if n_e else None, "swap_chance": k_c / n_e if n_e else None}
    fa["swap_success_lo"], fa["swap_success_hi"] = wilson_interval(k_s, n_e)
    fa["swap_chance_lo"], fa["swap_chance_hi"] = wilson_interval(k_c, n_e)
    fa |= _ci("swap_stayed", o["stayed"][was_top1].astype(float), config)
    med = [layer_rows[k].get("pooled_r2") for k in hl]
    fa["share_head_layers_r2_ge_half"] = float(np.mean([m is not None and m >= 0.5 for m in med])) if hl else None
    set_labels = [row.get("pooled_label") for row in head_rows if row["in_head_set"]]
    fa["share_set_heads_amplified"] = (float(np.mean([lab == "amplified" for lab in set_labels]))
                                       if set_labels else None)
    return {"regression_betas": t_betas, "regression_prompts": t_prompts, "regression_heads": head_rows,
            "regression_layers": layer_rows, "argument_swap": t_swap, "function_application": [fa]}


def _finite_mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


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
