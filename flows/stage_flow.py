"""The Prefect flow of every stage command: ``sweep`` of one stage (declared in ``factrecall.stages``) over
models x relations x shots. Its runs are named after the stage ("heads", "final_layer", ...)."""

from __future__ import annotations

from prefect import flow

from .sweep import sweep

__all__ = ["stage_flow"]


@flow(name="factrecall-stage", flow_run_name="{stage}", retries=0, log_prints=False)
def stage_flow(stage: str, models: list[str], relations: list[str], shots: list[int], store_root: str,
               settings: dict | None = None, dtype: str = "float32", device: str | None = None,
               show_progress: bool = True, force: bool = False, checked: list[str] | None = None,
               domains: dict[str, str] | None = None, cluster: dict | None = None) -> dict:
    return sweep(stage, models, relations, shots, store_root, settings, dtype, device, show_progress, force, checked,
                 domains=domains, cluster=cluster)
