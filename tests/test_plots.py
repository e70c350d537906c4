"""PNG figures: valid files, orientation/aspect, marked cells, atomic writes, scatter legend."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from factrecall.tasks import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


def _boxes(fig) -> list[tuple[float, float]]:
    """Lower-left corners of the boxes drawn on the heatmap's axes."""
    ax = fig.axes[0]
    return sorted((p.get_x(), p.get_y()) for p in ax.patches if isinstance(p, Rectangle))


def test_heatmap_png_tall_and_wide(tmp_path):
    rng = np.random.default_rng(0)
    tall = plots.heatmap(rng.normal(0, 10, (30, 9)), "effect% (30 layers x 9 heads)", tmp_path / "tall.png",
                         label="effect %", mark={(3, 2), (20, 8)})
    assert tall == tmp_path / "tall.png" and _is_png(tall)
    img = mpimg.imread(tall)
    assert img.ndim == 3 and img.shape[0] > 1.5 * img.shape[1]  # taller than wide: one square cell per head
    wide = plots.heatmap(rng.normal(0, 1, (4, 16)), "wide", tmp_path / "sub" / "wide.png")  # folder created
    img = mpimg.imread(wide)
    assert _is_png(wide) and img.shape[1] > img.shape[0]
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["tall.png", "wide.png"]


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
    path = plots.heatmap(values, "mostly not evaluated", tmp_path / "nan.png", mark={(2, 3)})
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
    path = plots.scatter(attn, dla, groups, "attention vs DLA", tmp_path / "scatter.png",
                         "attention END -> S", "DLA onto subject")
    assert _is_png(path) and mpimg.imread(path).shape[2] in (3, 4)
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
        plots.scatter([1.0], [1.0, 2.0], ["a"], "t", tmp_path / "bad.png", "x", "y")
    assert not (tmp_path / "bad.png").exists()


def test_atomic_replace_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = plots.heatmap(np.ones((2, 2)), "first", tmp_path / "h.png")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.heatmap(np.zeros((2, 2)), "second", path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]
