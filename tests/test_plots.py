"""PNG figures: valid images, orientation/aspect, marked cells, atomic file export, scatter legend."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from factrecall.tasks import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(png: bytes) -> bool:
    return png[:8] == PNG_SIGNATURE


def _image(png: bytes):
    return mpimg.imread(io.BytesIO(png), format="png")


def _boxes(fig) -> list[tuple[float, float]]:
    """Lower-left corners of the boxes drawn on the heatmap's axes."""
    ax = fig.axes[0]
    return sorted((p.get_x(), p.get_y()) for p in ax.patches if isinstance(p, Rectangle))


def test_heatmap_png_tall_and_wide(tmp_path):
    rng = np.random.default_rng(0)
    tall = plots.heatmap(rng.normal(0, 10, (30, 9)), "effect% (30 layers x 9 heads)",
                         label="effect %", mark={(3, 2), (20, 8)})
    assert _is_png(tall)
    img = _image(tall)
    assert img.ndim == 3 and img.shape[0] > 1.5 * img.shape[1]  # taller than wide: one square cell per head
    wide = plots.heatmap(rng.normal(0, 1, (4, 16)), "wide")
    img = _image(wide)
    assert _is_png(wide) and img.shape[1] > img.shape[0]
    path = plots.save(wide, tmp_path / "sub" / "wide.png")  # folder created
    assert path.read_bytes() == wide
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["wide.png"]


def test_heatmap_marks_and_orientation():
    values = np.arange(12, dtype=float).reshape(4, 3) - 5
    fig = plots._heatmap_figure(values, "t", mark={(0, 0), (3, 2), (1, 1)}, label="x")
    assert _boxes(fig) == [(-0.5, -0.5), (0.5, 0.5), (1.5, 2.5)]  # (head - 0.5, layer - 0.5)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "layer" and ax.get_xlabel() == "head" and ax.get_title() == "t"
    lo, hi = ax.get_ylim()
    assert lo < hi  # layer 0 at the bottom
    im = ax.images[0]
    assert im.norm.vmin == -im.norm.vmax == -6.0  # centered on zero: max |value| = 6
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "x"  # colour bar with its label
    assert _boxes(plots._heatmap_figure(values, "t")) == []
    fig = plots._heatmap_figure(values, "t", center_zero=False)
    assert (fig.axes[0].images[0].norm.vmin, fig.axes[0].images[0].norm.vmax) == (-5.0, 6.0)
    with pytest.raises(ValueError, match="outside"):
        plots._heatmap_figure(values, "t", mark={(4, 0)})
    with pytest.raises(ValueError, match="layers, heads"):
        plots._heatmap_figure(np.zeros(5), "t")


def test_heatmap_nan_cells(tmp_path):
    values = np.full((6, 5), np.nan)
    values[2, 3] = -4.0
    path = plots.heatmap(values, "mostly not evaluated", mark={(2, 3)})
    assert _is_png(path)
    fig = plots._heatmap_figure(np.full((2, 2), np.nan), "all nan")  # no finite value: still drawable
    assert fig.axes[0].images[0].norm.vmax == 1.0


def test_scatter(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    attn = rng.uniform(0, 1, 3 * n)
    noise = rng.normal(0, 0.1, 3 * n)
    dla = np.concatenate([2 * attn[:n], -attn[n:2 * n], rng.normal(0, 1, n)]) + noise
    groups = ["L9.H8"] * n + ["L10.H0"] * n + ["L5.H5"] * n
    path = plots.scatter(attn, dla, groups, "attention vs DLA",
                         "attention END -> S", "DLA onto subject")
    assert _is_png(path) and _image(path).shape[2] in (3, 4)
    fig = plots._scatter_figure(attn, dla, groups, "t", "ax", "ay")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split(" ")[0] for lab in labels] == ["L9.H8", "L10.H0", "L5.H5"]
    for lab, sl in zip(labels, (slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n))):
        r = np.corrcoef(attn[sl], dla[sl])[0, 1]
        assert f"r = {r:.2f}, n = {n}" in lab
    assert len({tuple(c.get_facecolor()[0]) for c in ax.collections}) == 3  # one colour per group
    # Degenerate groups: one point, constant values.
    assert "r = n/a" in [t.get_text() for t in plots._scatter_figure(
        [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], ["a", "b", "b"], "t", "x", "y").axes[0].get_legend().get_texts()][0]
    with pytest.raises(ValueError, match="same length"):
        plots.scatter([1.0], [1.0, 2.0], ["a"], "t", "x", "y")


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = plots.save(plots.heatmap(np.ones((2, 2)), "first"), tmp_path / "h.png")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save(plots.heatmap(np.zeros((2, 2)), "second"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]


def test_bars_heights_error_bars_and_shape_checks(tmp_path):
    cats = ["L29.H0", "L29.H1", "L29.mlp"]
    groups = {"answer": (np.array([-1.0, 0.5, 2.0]), np.array([-1.5, 0.2, 1.0]), np.array([-0.5, 0.9, 3.0])),
              "no interval": (np.array([0.3, 0.3, 0.3]),) * 3}
    path = plots.bars(cats, groups, "t", ylabel="DLA")
    assert _is_png(path)
    ax = plots._bars_figure(cats, groups, "t", "DLA").axes[0]
    heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
    assert heights == [-1.0, 0.5, 2.0, 0.3, 0.3, 0.3]
    # one error-bar set, for the group that has intervals, spanning [lo, hi]
    caps = [c for c in ax.containers if getattr(c, "has_yerr", False)]
    assert len(caps) == 1
    segs = caps[0].lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segs] == [(-1.5, -0.5), (0.2, 0.9), (1.0, 3.0)]
    with pytest.raises(ValueError, match="one entry per category"):
        plots.bars(cats, {"g": (np.zeros(2),) * 3}, "t")


def test_bands_lines_and_shape_checks(tmp_path):
    x = np.arange(-1, 4)
    mid, lo, hi = np.array([0.1, 0.2, 0.5, 0.4, 0.9]), np.zeros(5), np.ones(5)
    path = plots.bands(x, {"p(answer)": (mid, lo, hi)}, "t", ylabel="p")
    assert _is_png(path)
    ax = plots._bands_figure(x, {"p(answer)": (mid, lo, hi)}, "t", "layer", "p").axes[0]
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), x)
    np.testing.assert_array_equal(line.get_ydata(), mid)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["p(answer)"]
    with pytest.raises(ValueError, match="x's shape"):
        plots.bands(x, {"bad": (mid[:3], lo[:3], hi[:3])}, "t")


def test_a_beta_plot_of_300_heads_stays_within_its_size_bound(monkeypatch):
    from factrecall.tasks.mlp_stage import BETA_PLOT_HEADS, beta_plot

    rng = np.random.default_rng(0)
    rows = [{"layer": l, "head": h, "in_head_set": (l, h) in {(3, 1), (7, 4)}, "mean_beta": float(b),
             "mean_beta_lo": float(b) - 0.1, "mean_beta_hi": float(b) + 0.1, "pooled_beta": float(b)}
            for (l, h), b in zip([(l, h) for l in range(20) for h in range(15)], rng.normal(0, 1, 300))]
    img = _image(beta_plot(rows, "300 heads"))
    assert img.shape[1] <= 16 * 110 and img.shape[0] <= 6 * 110  # at most 1760 x 660 px
    # the set heads, the strongest others, and one bar summarising the rest
    shown = {}
    real = plots._bars_figure
    monkeypatch.setattr(plots, "_bars_figure", lambda cats, *a: shown.setdefault("cats", list(cats)) and real(cats, *a))
    beta_plot(rows, "300 heads")
    cats = shown["cats"]
    assert len(cats) == BETA_PLOT_HEADS + 1 and cats[-1].startswith("other 276")
    assert "L3.H1*" in cats and "L7.H4*" in cats
