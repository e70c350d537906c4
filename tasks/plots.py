"""PNG figures: per-head heatmaps and attention-vs-DLA scatters (METHOD.md §4); depth bands and bars with
intervals (METHOD.md §7).

Figures are built on matplotlib's Agg canvas (no display, no pyplot state); each function is pure and
returns the PNG's bytes (the store keeps them in its ``plots`` table; ``save`` writes one to a file).

Heatmap orientation: layer on the y axis with layer 0 at the BOTTOM (depth grows upwards), head on the
x axis; the figure's shape follows the grid (square cells), so a 30-layer x 9-head map is taller than
wide.
"""

from __future__ import annotations

import io
import os
import textwrap
import uuid
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator

__all__ = ["bands", "bars", "heatmap", "save", "scatter", "size_axis"]

_DPI = 110
MAX_WIDTH_IN = 16.0  # bar charts never get wider than this (1760 px): callers summarise beyond ~30 bars
_MARK_COLOR = "black"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def save(png: bytes, path: Path | str) -> Path:
    """Write ``png`` to ``path`` atomically (a temporary name in the folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _ticks(n: int, max_labels: int = 32) -> np.ndarray:
    step = max(1, int(np.ceil(n / max_labels)))
    return np.arange(0, n, step)


def _heatmap_figure(values: np.ndarray, title: str, cmap: str = "RdBu_r", center_zero: bool = True,
                    label: str = "", mark: set[tuple[int, int]] | None = None,
                    mark_label: str = "marked") -> Figure:
    """The heatmap's Figure (not saved); ``mark`` cells get a box (one ``Rectangle`` patch each)."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 2 or 0 in vals.shape:
        raise ValueError(f"values must be a non-empty [layers, heads] array, got shape {vals.shape}")
    n_layers, n_heads = vals.shape
    mark = {(int(l), int(h)) for l, h in (mark or set())}
    outside = sorted((l, h) for l, h in mark if not (0 <= l < n_layers and 0 <= h < n_heads))
    if outside:
        raise ValueError(f"marked cells {outside} are outside the {n_layers} x {n_heads} grid")

    finite = vals[np.isfinite(vals)]
    if center_zero:
        vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        norm = Normalize(-vmax, vmax)
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(lo, hi if hi > lo else lo + 1.0)

    # Square cells; the grid sets the figure's shape (capped so big models stay readable).
    cell = min(0.38, 11.0 / max(n_layers, n_heads))
    width = n_heads * cell + 2.4  # y label + tick labels + colour bar
    height = n_layers * cell + 1.5  # title + x label
    fig = Figure(figsize=(max(width, 4.0), max(height, 3.0)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cm = mpl.colormaps[cmap].with_extremes(bad="#d0d0d0")  # NaN (head not evaluated) in grey
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cm, norm=norm, origin="lower", aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(_ticks(n_heads))
    ax.set_yticks(_ticks(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    for l, h in sorted(mark):
        ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor=_MARK_COLOR, linewidth=2.0))
    if mark:
        handle = Line2D([], [], marker="s", markersize=10, markerfacecolor="none", markeredgecolor=_MARK_COLOR,
                        markeredgewidth=2.0, linestyle="none")
        fig.legend([handle], [f"{mark_label} ({len(mark)})"], loc="outside lower center", frameon=False)
    return fig


def heatmap(values: np.ndarray, title: str, cmap: str = "RdBu_r", center_zero: bool = True,
            label: str = "", mark: set[tuple[int, int]] | None = None, mark_label: str = "marked") -> bytes:
    """A [layers, heads] heatmap PNG.

    Layer on the y axis (layer 0 at the bottom), head on the x axis, colour bar titled ``label``.
    ``center_zero``: symmetric colour limits around 0 (white = 0 with a diverging ``cmap``); NaN cells
    are grey. ``mark``: (layer, head) cells outlined with a black box (e.g. the head set), counted in a
    legend as ``mark_label``.
    """
    return _png(_heatmap_figure(values, title, cmap, center_zero, label, mark, mark_label))


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else None


def _scatter_figure(x: Sequence[float], y: Sequence[float], groups: Sequence[str], title: str,
                    xlabel: str, ylabel: str) -> Figure:
    """The scatter's Figure (not saved): one colour per group (first-appearance order), r in the legend."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    groups = [str(g) for g in groups]
    if not (len(x) == len(y) == len(groups)):
        raise ValueError(f"x, y and groups must have the same length, got {len(x)}, {len(y)}, {len(groups)}")
    names = list(dict.fromkeys(groups))
    cmap = mpl.colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = Figure(figsize=(6.4, 4.8), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    g = np.asarray(groups, dtype=object)
    for i, name in enumerate(names):
        sel = (g == name) & np.isfinite(x) & np.isfinite(y)
        r = _pearson(x[sel], y[sel])
        r_txt = "n/a" if r is None else f"{r:.2f}"
        ax.scatter(x[sel], y[sel], s=14, alpha=0.75, color=cmap(i % cmap.N), edgecolors="none",
                   label=f"{name} (r = {r_txt}, n = {int(sel.sum())})")
    ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if names:
        ax.legend(fontsize="small", loc="best", frameon=True)
    return fig


def scatter(x: Sequence[float], y: Sequence[float], groups: Sequence[str], title: str,
            xlabel: str = "attention END -> S", ylabel: str = "DLA onto the subject") -> bytes:
    """A scatter PNG of ``y`` against ``x`` (one point per element).

    ``groups[i]`` names the series of point i (e.g. "L9.H8"); each group has its own colour and a
    legend entry with its Pearson r and n (non-finite points are left out).
    """
    return _png(_scatter_figure(x, y, groups, title, xlabel, ylabel))


def _bands_figure(x: Sequence[float], series: dict[str, tuple], title: str, xlabel: str, ylabel: str) -> Figure:
    x = np.asarray(x, dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = mpl.colormaps["tab10"]
    for i, (name, (mid, lo, hi)) in enumerate(series.items()):
        mid, lo, hi = (np.asarray(v, dtype=np.float64) for v in (mid, lo, hi))
        if not (mid.shape == lo.shape == hi.shape == x.shape):
            raise ValueError(f"series {name!r}: median, lo and hi must have x's shape {x.shape}")
        ax.plot(x, mid, color=cmap(i % cmap.N), marker="o", markersize=3, label=name)
        ax.fill_between(x, lo, hi, color=cmap(i % cmap.N), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
    return fig


def bands(x: Sequence[float], series: dict[str, tuple], title: str, xlabel: str = "layer",
          ylabel: str = "") -> bytes:
    """A line-and-band PNG: for each series name, (middle line, band low, band high) over ``x``."""
    return _png(_bands_figure(x, series, title, xlabel, ylabel))


def _bars_figure(categories: Sequence[str], groups: dict[str, tuple], title: str, ylabel: str) -> Figure:
    cats = [str(c) for c in categories]
    width = min(MAX_WIDTH_IN, max(7.0, 0.55 * len(cats) * max(1, len(groups)) + 2))
    fig = Figure(figsize=(width, 4.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = mpl.colormaps["tab10"]
    width = 0.8 / max(1, len(groups))
    pos = np.arange(len(cats), dtype=np.float64)
    for i, (name, (val, lo, hi)) in enumerate(groups.items()):
        val, lo, hi = (np.asarray(v, dtype=np.float64) for v in (val, lo, hi))
        if not (val.shape == lo.shape == hi.shape == (len(cats),)):
            raise ValueError(f"group {name!r}: values, lo and hi need one entry per category ({len(cats)})")
        err = np.stack([np.clip(val - lo, 0, None), np.clip(hi - val, 0, None)])
        err = np.where(np.isfinite(err), err, 0.0)
        has_interval = bool((err > 0).any())  # a group without intervals (lo = hi) gets no error bars
        ax.bar(pos + (i - (len(groups) - 1) / 2) * width, val, width, yerr=err if has_interval else None,
               capsize=3 if has_interval else 0, color=cmap(i % cmap.N), label=name)
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    ax.set_xticks(pos, cats, rotation=45 if len(cats) > 6 else 0, ha="right" if len(cats) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if groups:
        ax.legend(fontsize="small", loc="best")
    return fig


def bars(categories: Sequence[str], groups: dict[str, tuple], title: str, ylabel: str = "") -> bytes:
    """A grouped bar PNG: for each group name, (values, lo, hi) per category; error bars = [lo, hi]."""
    return _png(_bars_figure(categories, groups, title, ylabel))


def _size_axis_figure(rows: Sequence[dict]) -> Figure | None:
    """``rows``: the ``claims_by_size`` query's rows (only the pooled, relation 'all', ones are drawn: claim, statistic,
    shot, model, dtype, params, value, min_value, max_value). One panel per claim: the statistic against the
    parameter count (log axis), a line per shot through the models, and a band over the relations' range (min..max).
    One point per size: the float32 model's; a size measured only in bfloat16 (a spec's ``[model_dtypes]``) is drawn
    with a hollow marker, and a bfloat16 copy of a float32 model is left out (it is not another size)."""
    rows = [r for r in rows if r.get("relation", "all") == "all" and r.get("params") and r.get("value") is not None]
    exact = {r["params"] for r in rows if r.get("dtype") in (None, "float32")}
    rows = [r for r in rows if r.get("dtype") in (None, "float32") or r["params"] not in exact]
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    if len({r["params"] for r in rows}) < 2 or not claims:
        return None
    ncols = min(4, len(claims))
    nrows = int(np.ceil(len(claims) / ncols))
    fig = Figure(figsize=(3.8 * ncols, 3.2 * nrows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cmap = mpl.colormaps["tab10"]
    shots = sorted({int(r["shot"]) for r in rows})
    for i, claim in enumerate(claims):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        mine = [r for r in rows if r["claim"] == claim]
        for j, shot in enumerate(shots):
            pts = sorted((r for r in mine if int(r["shot"]) == shot), key=lambda r: r["params"])
            if not pts:
                continue
            color = cmap(j % cmap.N)
            x = np.array([r["params"] for r in pts], dtype=np.float64)
            ax.plot(x, [r["value"] for r in pts], color=color, label=f"shot {shot}")
            for r in pts:
                low = r.get("dtype") not in (None, "float32")
                ax.plot([r["params"]], [r["value"]], marker="o", markersize=4, color=color,
                        markerfacecolor="white" if low else color)
            ax.fill_between(x, [r["min_value"] for r in pts], [r["max_value"] for r in pts], color=color,
                            alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        family = {r["params"]: r.get("family") for r in mine}
        sizes = sorted(family)
        # the models' own sizes (not powers of ten), with their family: a size step may also be a family step
        ax.set_xticks(sizes, [_params_label(p) + (f"\n{family[p]}" if family[p] else "") for p in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(claim.replace("_", " "), fontsize="medium")
        # the statistic's description is long: wrapped to the panel's height so it stays clear of its neighbour
        ax.set_ylabel(textwrap.fill(mine[0].get("statistic") or "", 46), fontsize="x-small", linespacing=1.0)
        ax.tick_params(labelsize="small")
        if i == 0:
            ax.legend(fontsize="x-small", loc="best")
    low = sorted({r["model"] for r in rows if r.get("dtype") not in (None, "float32")})
    fig.supxlabel("parameters (log scale)" + (f"; hollow: bfloat16 ({', '.join(low)})" if low else ""))
    return fig


def _params_label(params: float) -> str:
    """A parameter count as people write it: 135M, 1.5B."""
    return f"{params / 1e9:.2g}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


def size_axis(rows: Sequence[dict]) -> bytes | None:
    """The size-axis PNG (see ``_size_axis_figure``), or None with fewer than two sized models."""
    fig = _size_axis_figure(rows)
    return None if fig is None else _png(fig)
