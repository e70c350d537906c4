"""Export the store's plots as PNG files: each current result's figures (from the ``plots`` table) and each
model's figures over its current results (the stages' ``model_plots``, drawn from the views)."""

from __future__ import annotations

from pathlib import Path

from factrecall.tasks.plots import save

from .query import internal_query, open_store

__all__ = ["export_plots"]


def export_plots(root: Path | str, folder: Path, as_of: str | None = None) -> list[Path]:
    """Write ``<folder>/<stage>/<model>/<relation>/shot=<k>/<name>.png`` for every current result and
    ``<folder>/<stage>/<model>/<name>.png`` per model; returns the paths written."""
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
    finally:
        view.close()
    return written
