"""Step 4 of the mechanism for one (model, relation, shot): the last layer's anti-overconfidence and
mitigating it (docs/METHOD.md §7).

One forward pass per batch of clean prompts gives the logit lens across depth, the last layer's
component DLA and the inputs of the last layer at END; every mitigation (alpha grid x variant) is then
a re-run of the last layer at END alone (``tasks.final_layer``). Controls: prompts of other relations
(same shot, same re-run) and the plain-text corpus (whole forward passes with hooks). ``compute`` yields
one ``Rows`` part for ``lens``, ``final_components``, ``final_layer_summary``, ``mitigation``,
``mitigation_curve`` and ``mitigation_prompts``, and returns the plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from . import plots
from .capture import capture_batch
from .control_text import corpus_hash, load_passages, passage_ids, text_logprobs
from .final_layer import (
    LastLayerInputs,
    calibration_split,
    final_layer_dla,
    final_layer_labels,
    mitigated_end_resid,
    token_directions,
)
from .intervals import bootstrap_mean_ci, mean_ci_fields, significantly_negative
from .logit_lens import TokenStats, depth_residuals, logit_lens_many, runner_up, token_stats
from .models import LoadedModel
from .path_patching import EndRunner
from .prompts import build_prompts
from .readout import final_norm_of, unembedding
from .relations import Relation, get_relation
from .stage_api import Rows, StageInput, StageOutput, StatsConfig, option
from .tokenization import TokenizedPrompt, length_sorted_batches, tokenize_prompts

ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: Other relations whose prompts measure what a mitigation costs elsewhere (one per domain and two more).
CONTROL_RELATIONS: tuple[str, ...] = ("paper.capital", "lre.country_language", "lre.object_superclass",
                                      "lre.adj_antonym", "lre.word_sentiment", "lre.name_gender")
#: Mitigation variants: name -> needs the answer label (oracle: scales the MLP along the answer's own
#: direction; not deployable, and not an upper bound of the others, which scale other components).
VARIANTS: dict[str, bool] = {"heads": False, "mlp_answer_oracle": True, "mlp_top1": False}
#: How alpha is chosen on the calibration half: the best mean log p(answer), or the best among the alphas
#: whose plain-text cost on the calibration passages stays within `text_cost_bound` (deployable variants).
CHOICES: tuple[str, ...] = ("unconstrained", "cost_bounded")
#: The (variant, choice) rows of a partition's mitigation table: the oracle has no text cost to bound.
MITIGATION_ROWS: tuple[tuple[str, str], ...] = tuple((v, c) for v, oracle in VARIANTS.items() for c in CHOICES
                                                     if not (oracle and c == "cost_bounded"))
# The fast END re-run of the last layer must reproduce the model's log p(answer) (float32 arithmetic).
RERUN_ATOL = 1e-3  # |log p(answer)| of the END re-run vs the model's own forward, float32
# A model read in lower precision re-runs its last layer in that precision, in a different order than the whole
# forward pass: rounding, not a wrong re-run. Stated per dtype (METHOD.md §9).
RERUN_ATOL_BY_DTYPE = {torch.float32: RERUN_ATOL, torch.float16: 5e-2, torch.bfloat16: 1e-1}
GRID_ROWS = 256  # (prompt, alpha) rows whose full-vocabulary logits are held at once


@dataclass(frozen=True)
class FinalLayerConfig(StatsConfig):
    alphas: tuple[float, ...] = option(ALPHAS, "Scales tried for the suppressing components (must include 1.0).",
                                       cli=False)
    calibration_share: float = option(0.5, "Share of prompts that choose the mitigation.", min=0.05, max=0.95)
    control_relations: tuple[str, ...] = option(CONTROL_RELATIONS, "Relations whose prompts measure the cost.",
                                                cli=False)
    control_prompts: int = option(8, "Prompts per control relation.", min=1)
    text_cost_bound: float = option(0.02, "Largest plain-text cost (mean drop of log p per token, nats, on the "
                                          "calibration passages) a cost-bounded mitigation may have.", min=0.0)

    def __post_init__(self) -> None:
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas) or 1.0 not in self.alphas:
            raise ValueError(f"alphas must lie in [0, 1] and include 1.0 (no change); got {self.alphas}")
        if not 0.0 < self.calibration_share < 1.0:
            raise ValueError(f"calibration_share must be in (0, 1), got {self.calibration_share}")


def extra_inputs(config: FinalLayerConfig) -> dict:
    """Inputs besides the partition's own: the control relations' data and the plain-text corpus."""
    return {"controls": {name: get_relation(name).data_hash() for name in config.control_relations},
            "corpus": corpus_hash()}


class RerunMismatchError(RuntimeError):
    """The END re-run of the last layer does not reproduce the model: its mitigation numbers would be wrong."""


@dataclass
class _Pass:
    """Per-prompt results of the clean pass, in prompt order."""

    lens_answer: TokenStats  # [n, L+1]
    lens_competitor: TokenStats  # [n, L+1]
    dla_answer: torch.Tensor  # [n, H+2]
    dla_competitor: torch.Tensor  # [n, H+2]
    competitor: torch.Tensor  # [n]
    inputs: LastLayerInputs
    answer: torch.Tensor  # [n]
    top1: torch.Tensor  # [n]
    model_logprob: torch.Tensor  # [n] log p(answer) from the HF model's own logits


def clean_pass(lm: LoadedModel, runner: EndRunner, prompts: list[TokenizedPrompt], batch_size: int,
               progress=None) -> _Pass:
    """One forward pass per batch: lens across depth, last-layer DLA and the last layer's END inputs."""
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    n, depth = len(prompts), lm.dims.n_layers + 1
    parts: dict[str, list] = {}
    order = []
    for idx, batch in length_sorted_batches(prompts, batch_size):
        cap = capture_batch(lm.model, lm.adapter, lm.dims, [list(p.input_ids) for p in batch], lm.pad_id)
        answer = torch.tensor([p.answer_token_id for p in batch], device=lm.device)
        competitor = runner_up(runner.logits(cap.resid_pre[:, -1]), answer)
        lens_a, lens_c = logit_lens_many(runner, depth_residuals(cap),
                                         [answer[:, None].expand(-1, depth), competitor[:, None].expand(-1, depth)])
        for name, value in (
            ("lens_answer", lens_a), ("lens_competitor", lens_c),
            ("dla_answer", final_layer_dla(cap, norm, w_u, answer)),
            ("dla_competitor", final_layer_dla(cap, norm, w_u, competitor)),
            ("competitor", competitor), ("inputs", LastLayerInputs.from_capture(cap)), ("answer", answer),
            ("top1", cap.logits.argmax(-1)), ("model_logprob", token_stats(cap.logits, answer).logprob),
        ):
            parts.setdefault(name, []).append(value)
        order.append(torch.as_tensor(idx))
        if progress is not None:
            progress(advance=len(batch))
    inverse = torch.argsort(torch.cat(order))  # batches come length-sorted: back to prompt order
    assert len(inverse) == n

    def joined(name):
        items = parts[name]
        if isinstance(items[0], TokenStats):
            return TokenStats(*(torch.cat([getattr(s, f) for s in items])[inverse.to(getattr(items[0], f).device)]
                                for f in _STAT_FIELDS))
        if isinstance(items[0], LastLayerInputs):
            return LastLayerInputs.cat(items).take(inverse.to(lm.device))
        return torch.cat(items)[inverse.to(items[0].device)]

    return _Pass(**{name: joined(name) for name in parts})


_STAT_FIELDS = ("logit", "logprob", "rank", "entropy", "top1")


@dataclass
class _Grid:
    """Answer statistics per prompt and row: row 0 = no change, then (variant, alpha) rows."""

    rows: list[tuple[str, float]]
    logp: np.ndarray  # [n, K]
    p: np.ndarray
    correct: np.ndarray

    def column(self, variant: str, alpha: float) -> int:
        return 1 + self.rows.index((variant, alpha)) if alpha != 1.0 else 0


@torch.inference_mode()
def mitigation_grid(lm: LoadedModel, runner: EndRunner, inputs: LastLayerInputs, answer: torch.Tensor,
                    top1: torch.Tensor, suppressor_heads: list[int], rows: list[tuple[str, float]],
                    batch_size: int) -> _Grid:
    """Re-run the last layer at END for every prompt and every (variant, alpha) row (row 0: no change)."""
    norm = final_norm_of(lm)
    w_u, _ = unembedding(lm)
    H, K = lm.dims.n_heads, len(rows) + 1
    head_scale = torch.ones(K, H, device=lm.device)
    mlp_alpha = torch.ones(K, device=lm.device)
    uses_top1 = torch.zeros(K, dtype=torch.bool, device=lm.device)
    for k, (variant, alpha) in enumerate(rows, start=1):
        if variant == "heads":
            head_scale[k, suppressor_heads] = alpha
        else:
            mlp_alpha[k] = alpha
            uses_top1[k] = variant == "mlp_top1"
    out = {name: [] for name in ("logp", "p", "correct")}
    step = max(1, min(batch_size, GRID_ROWS // K))  # bounds the [rows, vocab] logits held at once
    for start in range(0, len(inputs), step):
        sl = slice(start, start + step)
        part, a = inputs.take(sl), answer[sl]
        B = len(part)
        dirs = torch.where(uses_top1[None, :, None], token_directions(w_u, top1[sl], norm)[:, None],
                           token_directions(w_u, a, norm)[:, None])  # [B, K, d]
        x = mitigated_end_resid(runner, part, head_scale.expand(B, K, H), mlp_alpha.expand(B, K), dirs)
        stats = token_stats(runner.logits(x.reshape(B * K, -1)), a.repeat_interleave(K))
        out["logp"].append(stats.logprob.reshape(B, K).double().cpu().numpy())
        out["p"].append(stats.prob.reshape(B, K).double().cpu().numpy())
        out["correct"].append(stats.correct.reshape(B, K).cpu().numpy())
    return _Grid(rows, *(np.concatenate(out[name]) for name in ("logp", "p", "correct")))


def choose_alpha(grid: _Grid, variant: str, calibration: np.ndarray, alphas: tuple[float, ...]) -> tuple[float, float]:
    """(alpha, calibration gain in mean log p) maximising the calibration mean log p(answer); ties -> larger alpha."""
    base = grid.logp[calibration, 0].mean()
    best, gain = 1.0, 0.0
    for alpha in sorted(alphas, reverse=True):
        g = grid.logp[calibration, grid.column(variant, alpha)].mean() - base
        if g > gain + 1e-12:
            best, gain = alpha, g
    return best, float(gain)


def _control_prompts(lm: LoadedModel, relation: Relation, shot: int, config: FinalLayerConfig):
    names, prompts = [], []
    for name in config.control_relations:
        if name == relation.name:
            continue
        other = get_relation(name)
        if len({f.subject.casefold() for f in other.facts}) < shot + 1:
            continue
        built = build_prompts(other, shot, config.seed, max_prompts=config.control_prompts)
        names.append(name)
        prompts.extend(tokenize_prompts(lm.tokenizer, built, lm.max_length))
    return names, prompts


def compute(inp: StageInput) -> Iterator[Rows]:
    lm, relation, shot, config, progress = inp.lm, inp.relation, inp.shot, inp.config, inp.progress
    started = time.perf_counter()
    L, H = lm.dims.n_layers, lm.dims.n_heads
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, shot, config.seed, max_prompts=config.max_prompts),
                             lm.max_length)
    control_names, control = _control_prompts(lm, relation, shot, config)
    n = len(clean)
    progress(total=n + len(control) + 1)
    runner = EndRunner(lm)
    clean_res = clean_pass(lm, runner, clean, config.batch_size, progress)
    calibration = calibration_split(n, config.seed, config.calibration_share)
    held = ~calibration

    labels = final_layer_labels(L, H)
    # suppressors on the calibration half: components whose DLA onto the answer is significantly negative
    cal_dla = clean_res.dla_answer[torch.as_tensor(calibration, device=lm.device)].double().cpu().numpy()
    suppressing, _ = significantly_negative(cal_dla, config.n_boot, config.seed)
    suppressor_heads = [h for h in range(H) if suppressing[h]]
    mlp_suppresses = bool(suppressing[H + 1])
    components = {"heads": [labels[h].name for h in suppressor_heads],
                  "mlp_answer_oracle": [labels[H + 1].name] if mlp_suppresses else [],
                  "mlp_top1": [labels[H + 1].name] if mlp_suppresses else []}
    # only variants with something to scale get alpha rows (the others stay at alpha = 1, row 0)
    rows = [(v, a) for v in VARIANTS if components[v] for a in config.alphas if a != 1.0]
    grid = mitigation_grid(lm, runner, clean_res.inputs, clean_res.answer, clean_res.top1, suppressor_heads,
                           rows, config.batch_size)
    rerun_error = float(np.abs(grid.logp[:, 0] - clean_res.model_logprob.double().cpu().numpy()).max())
    rerun_atol = RERUN_ATOL_BY_DTYPE.get(lm.dtype, RERUN_ATOL)
    if rerun_error > rerun_atol:
        raise RerunMismatchError(f"{inp.title}: the END re-run of the last layer differs from the model's "
                                 f"log p(answer) by {rerun_error:.2e} (> {rerun_atol}); mitigation not computed")

    text = TextControl(lm, suppressor_heads, config.seed)
    chosen = choose_mitigations(grid, components, calibration, config, text)

    control_res = _controls(lm, runner, control, suppressor_heads, chosen, config.batch_size)
    progress(advance=len(control))
    progress(advance=1)

    summary = _summary_row(clean_res, L, H, labels, config)
    summary["seconds"] = time.perf_counter() - started
    yield Rows({
        "lens": _lens_columns(clean, clean_res, L),
        "final_components": _components_columns(clean, clean_res, labels, calibration),
        "final_layer_summary": [summary],
        "mitigation": _mitigation_rows(grid, chosen, components, calibration, control_res, control_names, text, config),
        "mitigation_curve": _curve_rows(grid, calibration, config.alphas, text),
        "mitigation_prompts": _mitigation_prompt_rows(clean, grid, chosen, calibration),
    })
    figures = _plots(inp.title, clean_res, labels, grid, chosen, calibration, config)
    held_gain = {f"{v} ({c})": float((grid.p[held, grid.column(v, a)] - grid.p[held, 0]).mean())
                 for (v, c), (a, _) in chosen.items()}
    return StageOutput({"n_prompts": n, "verdict": summary["verdict"], "delta_p": summary["delta_p"],
                        "delta_p_lo": summary["delta_p_lo"], "delta_p_hi": summary["delta_p_hi"],
                        "suppressors": summary["suppressors"], "held_out_delta_p": held_gain,
                        "rerun_max_error": rerun_error}, figures)


def _controls(lm, runner, control: list[TokenizedPrompt], suppressor_heads, chosen, batch_size) -> dict | None:
    """Per-prompt (before, after) log p and correctness on other relations' prompts at the chosen alphas."""
    if not control:
        return None
    res = clean_pass(lm, runner, control, batch_size)
    rows = sorted({(v, a) for (v, _), (a, _) in chosen.items() if a != 1.0})
    grid = mitigation_grid(lm, runner, res.inputs, res.answer, res.top1, suppressor_heads, rows, batch_size)
    return {"grid": grid, "n": len(control)}


class TextControl:
    """Next-token log p over the plain-text corpus with and without a deployable mitigation. The passages
    are split (seeded) into a calibration half, which a cost-bounded choice of alpha may look at, and a
    held-out half, on which the cost is reported."""

    def __init__(self, lm, suppressor_heads: list[int], seed: int) -> None:
        self.lm, self.suppressor_heads = lm, suppressor_heads
        rows = passage_ids(lm, load_passages())
        split = calibration_split(len(rows), seed)
        self.rows = {"calibration": [r for r, c in zip(rows, split) if c],
                     "held_out": [r for r, c in zip(rows, split) if not c]}
        self.base, self.top1, self.last_inputs = {}, {}, {}
        for name, rs in self.rows.items():
            recorded: list = []
            lp, top1 = text_logprobs(lm, rs, record=recorded)  # the last layer's inputs: later passes re-run it alone
            self.base[name], self.top1[name], self.last_inputs[name] = lp.double().numpy(), top1, recorded
        self._cache: dict = {}

    def n_tokens(self, split: str) -> int:
        return len(self.base[split])

    def delta(self, variant: str, alpha: float, split: str) -> np.ndarray:
        """Change of log p per text token (after - before) under ``variant`` at ``alpha``."""
        if alpha == 1.0:
            return np.zeros_like(self.base[split])
        key = (variant, alpha, split)
        if key not in self._cache:
            if variant == "heads":
                scale = torch.ones(self.lm.dims.n_heads)
                scale[self.suppressor_heads] = alpha
                after = text_logprobs(self.lm, self.rows[split], head_scale=scale,
                                      last_inputs=self.last_inputs[split], with_top1=False)[0]
            elif variant == "mlp_top1":
                after = text_logprobs(self.lm, self.rows[split], mlp_alpha=alpha, mlp_tokens=self.top1[split],
                                      last_inputs=self.last_inputs[split], with_top1=False)[0]
            else:
                raise ValueError(f"{variant} has no plain-text cost (it needs the answer label)")
            self._cache[key] = after.double().numpy() - self.base[split]
        return self._cache[key]


def choose_mitigations(grid: _Grid, components: dict, calibration: np.ndarray, config: FinalLayerConfig,
                       text: TextControl) -> dict[tuple[str, str], tuple[float, float]]:
    """(variant, choice) -> (alpha, calibration gain in mean log p): unconstrained for every variant, and
    cost-bounded for the deployable ones (alphas whose calibration-passage text cost exceeds the bound
    are not allowed; alpha = 1, no change, always is)."""
    out = {}
    for variant, oracle in VARIANTS.items():
        if not components[variant]:
            out[(variant, "unconstrained")] = (1.0, 0.0)
            if not oracle:
                out[(variant, "cost_bounded")] = (1.0, 0.0)
            continue
        out[(variant, "unconstrained")] = choose_alpha(grid, variant, calibration, config.alphas)
        if not oracle:
            allowed = tuple(a for a in config.alphas
                            if a == 1.0 or text.delta(variant, a, "calibration").mean() >= -config.text_cost_bound)
            out[(variant, "cost_bounded")] = choose_alpha(grid, variant, calibration, allowed)
    return out


def _summary_row(res: _Pass, L: int, H: int, labels, config: FinalLayerConfig) -> dict:
    before, after = L - 1, L  # depth index: 0 = embeddings, k = leaving block k-1
    a, c = res.lens_answer, res.lens_competitor
    arr = lambda t: t.double().cpu().numpy()  # noqa: E731
    p_b, p_a = arr(a.prob[:, before]), arr(a.prob[:, after])
    row = {"n": len(p_b), "layer": L - 1, "p_before": float(p_b.mean()), "p_after": float(p_a.mean())}
    boot = dict(n_boot=config.n_boot, seed=config.seed)
    row |= mean_ci_fields("delta_p", p_a - p_b, **boot)
    row |= mean_ci_fields("delta_logit", arr(a.logit[:, after] - a.logit[:, before]), **boot)
    row |= mean_ci_fields("share_dropped", (p_a < p_b).astype(np.float64), **boot)
    row |= mean_ci_fields("delta_p_competitor", arr(c.prob[:, after] - c.prob[:, before]), **boot)
    row |= mean_ci_fields("delta_logit_competitor", arr(c.logit[:, after] - c.logit[:, before]), **boot)
    e_b, e_a = arr(a.entropy[:, before]), arr(a.entropy[:, after])
    row |= {"entropy_before": float(e_b.mean()), "entropy_after": float(e_a.mean())}
    row |= mean_ci_fields("delta_entropy", e_a - e_b, **boot)
    mean_dla = arr(res.dla_answer.mean(0))
    suppressing, _ = significantly_negative(arr(res.dla_answer), config.n_boot, config.seed)
    row["suppressors"] = [labels[i].name for i in np.argsort(mean_dla) if suppressing[i]]
    row["n_components_tested"] = len(labels)
    row["suppression_dla"] = float(mean_dla[suppressing].sum())
    hi, lo = row["delta_p_hi"], row["delta_p_lo"]
    row["claim_holds"] = bool(hi is not None and hi < 0)
    row["verdict"] = ("suppresses" if row["claim_holds"] else
                      "raises" if lo is not None and lo > 0 else "inconclusive")
    return row


def _split_names(calibration: np.ndarray) -> np.ndarray:
    return np.where(calibration, "calibration", "held_out")


def _lens_columns(clean, res: _Pass, L) -> dict:
    n, depth = len(clean), L + 1
    a, c = res.lens_answer, res.lens_competitor
    flat = lambda t: t.reshape(-1).cpu().numpy()  # noqa: E731  [n, depth] -> rows (prompt, layer)
    return {
        "prompt_id": np.repeat([p.prompt.prompt_id for p in clean], depth).astype(np.int32),
        "layer": np.tile(np.arange(-1, L), n).astype(np.int16),
        "p_answer": flat(a.prob), "logit_answer": flat(a.logit), "logprob_answer": flat(a.logprob),
        "rank_answer": flat(a.rank), "p_competitor": flat(c.prob), "logit_competitor": flat(c.logit),
        "rank_competitor": flat(c.rank), "entropy": flat(a.entropy), "top1_token": flat(a.top1),
    }


def _components_columns(clean, res: _Pass, labels, calibration) -> dict:
    n, k = len(clean), len(labels)
    return {
        "prompt_id": np.repeat([p.prompt.prompt_id for p in clean], k).astype(np.int32),
        "split": np.repeat(_split_names(calibration), k),
        "component": np.tile([lab.name for lab in labels], n),
        "layer": np.tile([lab.layer for lab in labels], n).astype(np.int16),
        "head": np.tile(np.array([lab.head for lab in labels], dtype=object), n).tolist(),
        "answer_token": np.repeat(res.answer.cpu().numpy(), k).astype(np.int32),
        "competitor_token": np.repeat(res.competitor.cpu().numpy(), k).astype(np.int32),
        "dla_answer": res.dla_answer.reshape(-1).cpu().numpy(),
        "dla_competitor": res.dla_competitor.reshape(-1).cpu().numpy(),
    }


def _note(variant: str, choice: str, alpha: float, components, chosen, config: FinalLayerConfig) -> str | None:
    """Why a mitigation row is what it is, where that is not obvious (every no-op row says why)."""
    notes = []
    if VARIANTS[variant]:
        notes.append("oracle: scales the MLP along the answer's own direction, so it needs the label; not "
                     "deployable, and not an upper bound of the other variants (they scale other components); "
                     "no plain-text cost")
    if not components[variant]:
        notes.append("no component's DLA onto the answer is significantly negative on the calibration half: "
                     "nothing to scale")
    elif alpha == 1.0 and choice == "unconstrained":
        notes.append("alpha = 1 (no change): no smaller alpha raised the calibration mean log p(answer)")
    elif alpha == 1.0:
        free = chosen[(variant, "unconstrained")][0]
        notes.append("alpha = 1 (no change): " + (
            f"every alpha < 1 that raised the calibration log p cost more than {config.text_cost_bound:g} nats "
            f"per token on the calibration text (the unconstrained choice is alpha = {free:g})" if free != 1.0 else
            "no smaller alpha raised the calibration mean log p(answer)"))
    return "; ".join(notes) or None


def _mitigation_rows(grid: _Grid, chosen, components, calibration, control_res, control_names,
                     text: TextControl, config: FinalLayerConfig) -> list[dict]:
    held = ~calibration
    boot = dict(n_boot=config.n_boot, seed=config.seed)
    out = []
    for (variant, choice), (alpha, cal_gain) in chosen.items():
        oracle = VARIANTS[variant]
        col = grid.column(variant, alpha)
        row = {"variant": variant, "choice": choice, "oracle": oracle, "components": components[variant],
               "alpha": alpha, "split_seed": config.seed, "calibration_share": config.calibration_share,
               "text_cost_bound": None if choice == "unconstrained" else config.text_cost_bound,
               "n_calibration": int(calibration.sum()), "n_held_out": int(held.sum()),
               "calibration_delta_logp": cal_gain,
               "p_before": float(grid.p[held, 0].mean()), "p_after": float(grid.p[held, col].mean()),
               "acc_before": float(grid.correct[held, 0].mean()), "acc_after": float(grid.correct[held, col].mean()),
               "logp_before": float(grid.logp[held, 0].mean()), "logp_after": float(grid.logp[held, col].mean())}
        row |= mean_ci_fields("delta_p", grid.p[held, col] - grid.p[held, 0], **boot)
        row |= mean_ci_fields("delta_acc", grid.correct[held, col].astype(float) - grid.correct[held, 0], **boot)
        row |= mean_ci_fields("delta_logp", grid.logp[held, col] - grid.logp[held, 0], **boot)
        row["control_relations"] = control_names
        if control_res is not None:
            cg = control_res["grid"]
            ccol = cg.column(variant, alpha)
            row["n_control"] = control_res["n"]
            row |= mean_ci_fields("control_delta_logp", cg.logp[:, ccol] - cg.logp[:, 0], **boot)
            row |= mean_ci_fields("control_delta_acc", cg.correct[:, ccol].astype(float) - cg.correct[:, 0], **boot)
        row["n_text_tokens"] = text.n_tokens("held_out")
        if not oracle:
            row["calibration_text_delta_logp"] = float(text.delta(variant, alpha, "calibration").mean())
            row |= mean_ci_fields("text_delta_logp", text.delta(variant, alpha, "held_out"), **boot)
        row["note"] = _note(variant, choice, alpha, components, chosen, config)
        out.append(row)
    return out


def _curve_rows(grid: _Grid, calibration, alphas, text: TextControl) -> list[dict]:
    out = []
    for variant, oracle in VARIANTS.items():
        for alpha in alphas:
            if alpha != 1.0 and (variant, alpha) not in grid.rows:
                continue  # a variant with nothing to scale has only alpha = 1
            col = grid.column(variant, alpha)
            for split, mask in (("calibration", calibration), ("held_out", ~calibration)):
                out.append({"variant": variant, "alpha": alpha, "split": split, "n": int(mask.sum()),
                            "mean_p": float(grid.p[mask, col].mean()), "mean_logp": float(grid.logp[mask, col].mean()),
                            "accuracy": float(grid.correct[mask, col].mean()),
                            "text_delta_logp": None if oracle else float(text.delta(variant, alpha, split).mean())})
    return out


def _mitigation_prompt_rows(clean, grid: _Grid, chosen, calibration) -> list[dict]:
    out = []
    splits = _split_names(calibration)
    for (variant, choice), (alpha, _) in chosen.items():
        col = grid.column(variant, alpha)
        for i, p in enumerate(clean):
            out.append({"prompt_id": p.prompt.prompt_id, "split": str(splits[i]), "variant": variant,
                        "choice": choice, "alpha": alpha, "p_before": float(grid.p[i, 0]),
                        "p_after": float(grid.p[i, col]), "logp_before": float(grid.logp[i, 0]),
                        "logp_after": float(grid.logp[i, col]), "correct_before": bool(grid.correct[i, 0]),
                        "correct_after": bool(grid.correct[i, col])})
    return out


def _plots(title: str, res: _Pass, labels, grid: _Grid, chosen, calibration,
           config: FinalLayerConfig) -> dict[str, bytes]:
    """p(answer) by depth (median and interquartile band), last-layer DLA bars, mitigation before/after."""
    depth = res.lens_answer.prob.shape[1]

    def band(t):
        q = np.quantile(t.double().cpu().numpy(), [0.5, 0.25, 0.75], axis=0)
        return q[0], q[1], q[2]

    figures = {"lens_by_layer": plots.bands(
        np.arange(-1, depth - 1), {"p(answer)": band(res.lens_answer.prob), "p(competitor)": band(res.lens_competitor.prob)},
        f"logit lens at END: median and interquartile band\n{title}", xlabel="layer (-1 = embeddings)",
        ylabel="probability")}
    boot = dict(n_boot=config.n_boot, seed=config.seed)
    dla_a = bootstrap_mean_ci(res.dla_answer.double().cpu().numpy(), **boot)
    dla_c = bootstrap_mean_ci(res.dla_competitor.double().cpu().numpy(), **boot)
    figures["final_layer_dla"] = plots.bars(
        [lab.name for lab in labels], {"onto the answer": dla_a, "onto the competitor": dla_c},
        f"last-layer components: mean DLA (95% interval)\n{title}", ylabel="DLA (logit units)")
    held = ~calibration
    before, after = [], []
    for (variant, _), (alpha, _) in chosen.items():
        col = grid.column(variant, alpha)
        before.append(bootstrap_mean_ci(grid.p[held, 0], **boot))
        after.append(bootstrap_mean_ci(grid.p[held, col], **boot))
    names = [f"{v}\n{c.replace('_', '-')} α={a:g}" for (v, c), (a, _) in chosen.items()]
    stack = lambda rows: tuple(np.array([r[i] for r in rows], dtype=float) for i in range(3))  # noqa: E731
    figures["mitigation"] = plots.bars(
        names, {"before": stack(before), "after": stack(after)},
        f"mitigation on held-out prompts: mean p(answer) (95% interval)\n{title}", ylabel="mean p(answer)")
    return figures


def model_lens_plot(con, model: str) -> bytes | None:
    """p(answer) by layer for one model over the current final-layer results (``con``: a store
    connection): median and interquartile band per shot (all relations pooled)."""
    from factrecall.storage.query import internal_query

    rows = con.execute(internal_query("lens_by_shot"), {"model": model}).fetchall()
    if not rows:
        return None
    series, layers = {}, None
    for shot in sorted({r[0] for r in rows}):
        part = [r for r in rows if r[0] == shot]
        layers = [r[1] for r in part]
        series[f"shot {shot} ({part[0][5]} relations, {part[0][6]} prompts)"] = tuple(
            np.array([r[i] for r in part], dtype=float) for i in (2, 3, 4))
    return plots.bands(np.array(layers), series, f"{model}: p(answer) by layer, median and interquartile band",
                       xlabel="layer (-1 = embeddings)", ylabel="p(answer)")
