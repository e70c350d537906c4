"""Export the store's plots as PNG files: each current result's figures (from the ``plots`` table) and each
model's figures over its current results (the stages' ``model_plots``, drawn from the views)."""

from __future__ import annotations

from pathlib import Path

from factrecall.tasks.plots import save, size_axis

from .query import internal_query, named_query, open_store

__all__ = ["export_plots", "export_published_plots", "size_axis_png"]


def size_axis_png(view) -> bytes | None:
    """Each claim's statistic against parameter count over the current claims (``claims_by_size``); None with
    fewer than two models of known size."""
    if "claims" in view.missing:
        return None
    return size_axis(view.pl(named_query("claims_by_size")).to_dicts())


def export_plots(root: Path | str, folder: Path, as_of: str | None = None) -> list[Path]:
    """Write ``<folder>/<stage>/<model>/<relation>/shot=<k>/<name>.png`` for every current result and
    ``<folder>/<stage>/<model>/<name>.png`` per model, and ``<folder>/claims/size_axis.png`` when the current
    claims span two or more models of known size; returns the paths written."""
    from factrecall.stages import STAGES

    view = open_store(root, as_of)
    written = []
    try:
        if "plots" not in view.missing:
            for model, relation, shot, stage, name, png in view.sql(internal_query("plots_of_current_results")).fetchall():
                written.append(save(png, folder / stage / model / relation / f"shot={shot}" / f"{name}.png"))
        models = [m for (m,) in view.sql(internal_query("models_with_current_results")).fetchall()]
        for stage in STAGES.values():
            for name, draw in stage.model_plots.items():
                if any(t in view.missing for t in stage.schemas):
                    continue
                for model in models:
                    png = draw(view.con, model)
                    if png is not None:
                        written.append(save(png, folder / stage.name / model / f"{name}.png"))
        png = size_axis_png(view)
        if png is not None:
            written.append(save(png, folder / "claims" / "size_axis.png"))
    finally:
        view.close()
    return written


def export_published_plots(published: Path | str, folder: Path) -> list[Path]:
    """Write ``<folder>/claims/size_axis.png`` from a folder of published claims (``storage.published``: the
    claims and models views only, so only the plots drawn from them); returns the paths written."""
    from .published import open_published

    with open_published(published) as view:
        png = size_axis_png(view)
    return [] if png is None else [save(png, folder / "claims" / "size_axis.png")]
