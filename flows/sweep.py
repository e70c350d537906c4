"""Prefect flows: `sweep(models, relations, shots)` captures, `analyze_heads(...)` finds the
argument-passing heads, `analyze_mechanism(...)` regresses the MLPs on the heads and finds the
task-aware component, `analyze_final_layer(...)` measures the last layer's suppression and its
mitigation; one task per partition, captures cached by content hash.

Prefect runs serverless (ephemeral), quietly and offline, with its home inside the state directory
(`factrecall.paths.configure_prefect`, applied before Prefect is imported). Errors in our inputs are
deterministic, so tasks never retry. A model whose numbers do not add up (its ledger, the END re-run
of its last layer, or its stored vectors) is refused: its remaining partitions are not attempted, and
the flow reports it.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from factrecall.paths import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from factrecall.storage.store import PartitionKey, Store  # noqa: E402
from factrecall.tasks.ledger import ledger_rtol  # noqa: E402
from factrecall.tasks.models import DTYPES, load_model  # noqa: E402
from factrecall.tasks.partition_capture import LedgerError, model_info_table  # noqa: E402
from factrecall.tasks.relations import get_relation  # noqa: E402
from factrecall.version import code_version, package_versions  # noqa: E402

from .final_layer import FinalLayerConfig, RerunMismatchError, model_lens_plot, run_final_layer_analysis  # noqa: E402
from .heads import HeadConfig, run_head_analysis  # noqa: E402
from .mechanism import MechanismConfig, StoreMismatchError, model_swap_plot, run_mechanism_analysis  # noqa: E402
from .partition import CaptureConfig, input_hash, run_partition  # noqa: E402


def _partition_cache_key(context, parameters) -> str | None:
    """Cache by the partition's content hash, but only while the store still holds that partition."""
    store: Store = parameters["store"]
    lm, relation, shot = parameters["lm"], parameters["relation"], parameters["shot"]
    digest = input_hash(lm, relation, shot, parameters["config"])
    if store.is_committed(PartitionKey(lm.model_id, relation.name, shot), digest):
        return f"factrecall-partition-{store.root}-{digest}"
    return None


@task(name="capture-partition", retries=0, cache_key_fn=_partition_cache_key, persist_result=True,
      task_run_name="{relation.name}/shot={shot}")
def capture_partition_task(store: Store, lm, relation, shot: int, config: CaptureConfig, run_id: str,
                           progress=None) -> dict:
    return run_partition(store, lm, relation, shot, config, run_id, progress=progress).__dict__


@task(name="load-model", retries=0, cache_policy=NO_CACHE)
def load_model_task(ref: str, dtype: str, device: str | None):
    return load_model(ref, dtype=dtype, device=device)


@task(name="head-analysis", retries=0, cache_policy=NO_CACHE, task_run_name="heads {relation.name}/shot={shot}")
def head_analysis_task(store: Store, lm, relation, shot: int, config: HeadConfig, run_id: str,
                       progress=None) -> dict:
    return run_head_analysis(store, lm, relation, shot, config, run_id, progress=progress)


@task(name="final-layer", retries=0, cache_policy=NO_CACHE, task_run_name="final layer {relation.name}/shot={shot}")
def final_layer_task(store: Store, lm, relation, shot: int, config: FinalLayerConfig, run_id: str,
                     progress=None) -> dict:
    return run_final_layer_analysis(store, lm, relation, shot, config, run_id, progress=progress)


@task(name="mlp", retries=0, cache_policy=NO_CACHE, task_run_name="mlp {relation.name}/shot={shot}")
def mechanism_task(store: Store, lm, relation, shot: int, config: MechanismConfig, run_id: str,
                   progress=None) -> dict:
    return run_mechanism_analysis(store, lm, relation, shot, config, run_id, progress=progress)


@flow(name="factrecall-sweep", retries=0, log_prints=False)
def sweep(
    models: list[str],
    relations: list[str],
    shots: list[int],
    store_root: str,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    variants: tuple[str, ...] = ("clean",),
    max_prompts: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Capture every (model, relation, shot) partition into the store; returns the run manifest."""
    config = CaptureConfig(seed=seed, variants=tuple(variants), max_prompts=max_prompts, batch_size=batch_size)
    return _over_partitions(
        "capture", capture_partition_task, config, models, relations, shots, store_root, dtype, device,
        show_progress)


@flow(name="factrecall-heads", retries=0, log_prints=False)
def analyze_heads(
    models: list[str],
    relations: list[str],
    shots: list[int],
    store_root: str,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    max_prompts: int | None = None,
    n_boot: int = 1000,
    coverage: float = 0.8,
    show_progress: bool = True,
) -> dict:
    """Step 1 (METHOD.md §4) for every (model, relation, shot): head statistics, exact path patching,
    the task-specific head set and its plots; captures whatever it needs first."""
    config = HeadConfig(seed=seed, max_prompts=max_prompts, batch_size=batch_size, n_boot=n_boot,
                        coverage=coverage)
    return _over_partitions(
        "heads", head_analysis_task, config, models, relations, shots, store_root, dtype, device, show_progress)


@flow(name="factrecall-final-layer", retries=0, log_prints=False)
def analyze_final_layer(
    models: list[str],
    relations: list[str],
    shots: list[int],
    store_root: str,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    max_prompts: int | None = None,
    n_boot: int = 1000,
    calibration_share: float = 0.5,
    control_prompts: int = 8,
    show_progress: bool = True,
) -> dict:
    """Step 4 (METHOD.md §7) for every (model, relation, shot): logit lens across depth, the last layer's
    suppressors, and the mitigation chosen on a calibration half and reported on the held-out half."""
    config = FinalLayerConfig(seed=seed, max_prompts=max_prompts, batch_size=batch_size, n_boot=n_boot,
                              calibration_share=calibration_share, control_prompts=control_prompts)
    return _over_partitions(
        "final_layer", final_layer_task, config, models, relations, shots, store_root, dtype, device,
        show_progress, model_done=model_lens_plot,
    )


@flow(name="factrecall-mlp", retries=0, log_prints=False)
def analyze_mechanism(
    models: list[str],
    relations: list[str],
    shots: list[int],
    store_root: str,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str | None = None,
    max_prompts: int | None = None,
    n_boot: int = 1000,
    show_progress: bool = True,
) -> dict:
    """Steps 2-3 (METHOD.md §5-6) for every (model, relation, shot): the MLP regressed on the heads of
    each layer from the first head-set layer on, the task-aware component, removing it, and the
    argument swap; runs the head analysis first where the store has no head set."""
    config = MechanismConfig(seed=seed, max_prompts=max_prompts, batch_size=batch_size, n_boot=n_boot)
    return _over_partitions(
        "mlp", mechanism_task, config, models, relations, shots, store_root, dtype, device, show_progress,
        model_done=model_swap_plot,
    )


def _over_partitions(kind, partition_task, config, models, relations, shots, store_root, dtype, device,
                     show_progress, model_done=None) -> dict:
    """Load each model once, run `partition_task` for every (relation, shot), write the run manifest
    (whose settings are the stage config's fields).

    `model_done(store, model_id)`, when given, runs after a model's partitions and returns a plot path
    (or None); the paths are recorded in the manifest under "plots".
    """
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    started = datetime.now(timezone.utc).isoformat()
    store = Store(Path(store_root))
    rels = [get_relation(r) for r in relations]  # bad names fail before any model loads
    partitions: list[dict] = []
    refused: dict[str, str] = {}
    timings: dict[str, float] = {}
    model_hashes: dict[str, str | None] = {}
    model_plots: dict[str, str] = {}
    with _progress(show_progress) as progress:
        for ref in models:
            t0 = time.perf_counter()
            lm = load_model_task(ref, dtype, device)
            timings[f"load:{lm.model_id}"] = round(time.perf_counter() - t0, 3)
            model_hashes[lm.model_id] = lm.file_sha256
            try:
                for relation in rels:
                    for shot in shots:
                        bar = progress.bar(f"{kind} {lm.model_id} {relation.name} shot={shot}")
                        result = partition_task(store, lm, relation, shot, config, run_id, progress=bar)
                        bar(done=True, status=result["status"])
                        partitions.append(result)
            except (LedgerError, RerunMismatchError, StoreMismatchError) as exc:  # the model's numbers do not add up
                refused[lm.model_id] = str(exc)
                continue
            store.write_model_table("model_info", lm.model_id, model_info_table(lm, ref))
            if model_done is not None and (plot := model_done(store, lm.model_id)):
                model_plots[lm.model_id] = plot
    manifest = {
        "run_id": run_id,
        "kind": kind,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "code_version": code_version(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "seed": config.seed,
        "config": {"models": models, "relations": relations, "shots": list(shots), "dtype": dtype, "device": device,
                   **asdict(config), "bos": "tokenizer default",
                   "answer_token": "first token of ' ' + object after the prompt", "padding": "right",
                   "ledger_rtol": ledger_rtol(DTYPES[dtype])},
        "model_sha256": model_hashes,
        "relation_sha256": {r.name: r.content_hash() for r in rels},
        "partitions": partitions,
        "refused": refused,
        "timings": timings,
        "plots": model_plots,
        "store": str(store.root),
    }
    store.write_run(manifest)
    return manifest


class _progress:
    """A rich progress display with one bar per partition (or nothing when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._p.__exit__(*exc)

    def bar(self, description: str):
        if not self.enabled:
            return lambda **kw: None
        task_id = self._p.add_task(description, total=None, status="")

        def update(total=None, advance=None, done=False, status=""):
            if total is not None:
                self._p.update(task_id, total=total)
            if advance:
                self._p.advance(task_id, advance)
            if done:
                t = self._p.tasks[task_id]
                self._p.update(task_id, total=t.total or 1, completed=t.total or 1, status=status)

        return update
