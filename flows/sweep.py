"""One command over (model, relation, shot) partitions: the Prefect task per partition, progress, and the
run manifest. The stage flows (``flows.capture``, ``flows.heads``, ...) are this with their stage's name.

Prefect runs serverless (ephemeral), quietly and offline, with its home inside the state directory
(``factrecall.paths.configure_prefect``, applied before Prefect is imported). Errors in our inputs are
deterministic, so tasks never retry. A model whose numbers do not add up (its ledger, the END re-run
of its last layer, or its stored vectors) is refused: its remaining partitions are not attempted, and
the manifest says why.
"""

from __future__ import annotations

import platform
import uuid
from datetime import datetime, timezone

import torch

from factrecall.paths import configure_prefect

configure_prefect()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from .prefect_server import install as _watch_prefect_server  # noqa: E402

_watch_prefect_server()

from factrecall.stages import STAGES  # noqa: E402
from factrecall.storage.location import store_location  # noqa: E402
from factrecall.storage.store import Store  # noqa: E402
from factrecall.tasks.ledger import ledger_rtol  # noqa: E402
from factrecall.tasks.models import DTYPES  # noqa: E402
from factrecall.tasks.relations import get_relation  # noqa: E402
from factrecall.version import code_version, package_versions  # noqa: E402

from .cluster import ClusterOptions, run_on_dask  # noqa: E402
from .preflight import preflight  # noqa: E402
from .progress import Progress  # noqa: E402
from .runner import REFUSALS, ModelHandle, Runner  # noqa: E402

__all__ = ["model_records", "new_run_id", "relation_records", "sweep"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@task(name="partition", retries=0, cache_policy=NO_CACHE, task_run_name="{stage} {relation.name}/shot={shot}")
def partition_task(runner: Runner, stage: str, config, model: ModelHandle, relation, shot: int, progress=None,
                   force: bool = False) -> dict:
    return runner.run(stage, config, model, relation, shot, progress=progress, force=force).as_dict()


def relation_records(run_id: str, rels) -> list[dict]:
    """The ``relations`` record rows of a run: each relation's source, domain, counts and content hash."""
    now = datetime.now(timezone.utc)
    return [{"run_id": run_id, "relation": r.name, "source": r.source, "domain": r.domain, "n_facts": len(r.facts),
             "n_subjects": len({f.subject for f in r.facts}), "n_templates": len(r.templates),
             "n_prompts": r.n_prompts, "content_hash": r.content_hash(), "source_file": r.source_file,
             "recorded_at": now} for r in rels]


def model_records(run_id: str, handles) -> list[dict]:
    """The ``models`` record rows of a run: each model's family, sizes and parameter count (before any write:
    the preflight has prepared every model, so this reads configs and file headers only)."""
    now = datetime.now(timezone.utc)
    return [{"run_id": run_id, **h.record(), "recorded_at": now} for h in handles]


def sweep(stage: str, models: list[str], relations: list[str], shots: list[int], store_root: str,
          settings: dict | None = None, dtype: str = "float32", device: str | None = None,
          show_progress: bool = True, force: bool = False, checked: list[str] | None = None,
          kind: str | None = None, after=None, domains: dict[str, str] | None = None,
          cluster: dict | None = None, model_dtypes: dict[str, str] | None = None) -> dict:
    """Run ``stage`` (and what it needs) for every (model, relation, shot); returns the run manifest.
    ``checked``: the warnings of a preflight the caller already ran (the CLI does, before Prefect starts).
    ``kind``: the run's kind in ``runs`` (default: the stage). ``after(store, catalog, manifest) -> dict``: runs under
    the writer lock once every partition is done, before the manifest is written (a reproduction records its
    claims and drift there); what it returns is added to the manifest. ``domains``: relation file -> the domain
    it gets when its lines name none (`--domain`, a spec's relation domain). ``cluster``: run the partitions on
    Dask (``flows.cluster.ClusterOptions`` as a dict: local workers or a scheduler address); None: one by one here.
    ``model_dtypes``: model -> its dtype where it is not ``dtype`` (a spec's ``[model_dtypes]``)."""
    spec = STAGES[stage]
    config = spec.config(**(settings or {}))
    run_id = new_run_id()
    started = datetime.now(timezone.utc)
    rels = [get_relation(r, (domains or {}).get(r)) for r in relations]  # bad names fail before any model loads
    model_dtypes = model_dtypes or {}
    handles = [ModelHandle(ref, model_dtypes.get(ref, dtype), device) for ref in models]
    root = store_location(store_root)
    warnings = checked if checked is not None else preflight(spec, config, handles, rels, list(shots),
                                                                root)  # before any write
    models_rows = model_records(run_id, handles)
    store = Store(root)
    partitions: list[dict] = []
    refused: dict[str, str] = {}
    timings: dict[str, float] = {}
    manifest = {
        "run_id": run_id, "kind": kind or stage, "started_at": started, "finished_at": None,
        # the code version was read when the runner was imported (`pin_code`): the code this run computes with
        "code_version": code_version(), "packages": package_versions(), "python": platform.python_version(),
        "seed": config.seed,
        "config": {"models": models, "relations": relations, "shots": list(shots), "dtype": dtype,
                   "model_dtypes": model_dtypes,
                   "device": device, "threads": torch.get_num_threads(), "stage": stage, "cluster": cluster,
                   "settings": {k: getattr(config, k) for k in config.__dataclass_fields__},
                   "bos": "tokenizer default", "answer_token": "first token of ' ' + object after the prompt",
                   "padding": "right",
                   "ledger_rtol": {m.model_id: ledger_rtol(DTYPES[m.dtype]) for m in handles}},
        "model_sha256": {m.model_id: m.file_sha256 for m in handles},
        "relation_sha256": {r.name: r.content_hash() for r in rels},
        "relation_repairs": {r.name: list(r.repairs) for r in rels if r.repairs},
        "store": str(store.root),
    }
    with store.writing():
        # what the results are computed from, recorded before the first of them: a run stopped half-way (Ctrl-C,
        # SIGTERM, a lost machine) leaves committed results whose relations (domain), models (family, size) and
        # run (code version, settings: the start row, finished_at null) say what they are; the run's end row adds
        # what happened to each partition
        store.append_records("relations", relation_records(run_id, rels))
        store.append_records("models", models_rows)
        store.write_run(manifest)
        if cluster:
            with Progress(show_progress) as progress:
                partitions, refused, timings, notes = run_on_dask(stage, config, handles, rels, list(shots),
                                                                  str(store.root), run_id, force,
                                                                  ClusterOptions(**cluster), progress)
            runner = Runner(store, run_id)  # a fresh catalogue, with what the workers committed
            runner.notes, runner.touched = notes, {(p["model"], p["relation"], p["shot"]) for p in partitions}
        else:
            runner = Runner(store, run_id)
            with Progress(show_progress) as progress:
                for model in handles:
                    try:
                        for relation in rels:
                            for shot in shots:
                                bar = progress.bar(f"{spec.command} {model.model_id} {relation.name} shot={shot}")
                                result = partition_task(runner, stage, config, model, relation, shot, progress=bar,
                                                        force=force)
                                bar(done=True, status=result["status"])
                                partitions.append(result)
                    except REFUSALS as exc:  # the model's numbers do not add up
                        refused[model.model_id] = str(exc)
            timings = {f"load:{m.model_id}": round(m.load_seconds, 3) for m in handles if m.loaded}
        manifest |= {"partitions": partitions, "refused": refused, "timings": timings}
        if after is not None:
            manifest |= after(store, runner.catalog, manifest)
        manifest["finished_at"] = datetime.now(timezone.utc)
        store.write_run(manifest)
        store.compact()  # the catalogue's small files, once there are many (query start-up reads them all)
    manifest["notes"] = runner.notes
    manifest["warnings"] = warnings
    manifest["stale"] = runner.stale_notes()
    return manifest
