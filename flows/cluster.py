"""Partitions on a Dask cluster through Prefect's Dask task runner (prefect-dask).

A sweep's partitions are independent (each runs its stage and the stages it needs for one model, relation and
shot), so they run as Prefect tasks on Dask workers. Each worker process keeps what it loaded: a model is
loaded at most once per worker and kept for all of that worker's partitions of the model, and the store's
catalogue is read once per worker and run. Partitions are placed on workers by ``plan``: every partition of
one model goes to the same worker while there are at least as many models as workers, and a model's
partitions are spread over a share of the workers otherwise. The placement is a preference: a worker that
runs out of work steals queued partitions (Dask's work stealing), loading their model once, so a big model
never keeps one worker busy while the others idle.

With ``address`` the partitions go to an existing cluster (``tcp://host:8786``): its workers must have
factrecall installed, read the same store path (a shared file system) and reach the same Prefect API
(``PREFECT_API_URL``). Without it a local cluster of ``workers`` processes is started and stopped with the
run; its workers use this process's Prefect API, so every task run shows in the same flow run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

__all__ = ["ClusterOptions", "plan", "run_on_dask"]


@dataclass(frozen=True)
class ClusterOptions:
    """``workers``: processes of a local cluster; ``address``: an existing scheduler instead; ``threads``:
    torch threads per worker (default: this machine's cores divided among the local workers, at least 1)."""

    workers: int = 2
    address: str | None = None
    threads: int | None = None


# ---- worker side: what a worker process keeps between its tasks ---------------------------------------------
_MODELS: dict[tuple, object] = {}  # (ref, dtype, device) -> ModelHandle
_RUNNERS: dict[tuple, object] = {}  # (store root, run id) -> Runner


def _worker_model(ref: str, dtype: str, device: str | None):
    from .runner import ModelHandle

    key = (ref, dtype, device)
    if key not in _MODELS:
        _MODELS[key] = ModelHandle(ref, dtype, device)
    return _MODELS[key]


def _worker_runner(store_root: str, run_id: str):
    from factrecall.storage.store import Store

    from .runner import Runner

    key = (store_root, run_id)
    if key not in _RUNNERS:
        _RUNNERS.clear()  # one run at a time per worker: an earlier run's catalogue is stale
        _RUNNERS[key] = Runner(Store(store_root), run_id)
    return _RUNNERS[key]


@task(name="partition", retries=0, cache_policy=NO_CACHE, task_run_name="{stage} {model_ref} {relation.name}/shot={shot}")
def partition_on_worker(store_root: str, run_id: str, stage: str, config, model_ref: str, dtype: str,
                        device: str | None, relation, shot: int, force: bool, threads: int | None) -> dict:
    """One partition on a Dask worker: the outcome (``Outcome.as_dict``), or ``{"refused": message}`` when the
    model's numbers do not add up; with the worker's pid, its selection notes and its model loads."""
    import torch

    from .runner import REFUSALS

    if threads:
        torch.set_num_threads(threads)
    model = _worker_model(model_ref, dtype, device)
    runner = _worker_runner(store_root, run_id)
    notes_before = len(runner.notes)
    loaded_before = model.loaded
    try:
        with runner.store.writing():
            out = runner.run(stage, config, model, relation, shot, force=force).as_dict()
    except REFUSALS as exc:
        out = {"refused": str(exc), "model": model.model_id}
    loaded_here = model.loaded and not loaded_before
    return out | {"worker": os.getpid(), "notes": runner.notes[notes_before:],
                  "loaded": model.load_seconds if loaded_here else None}


# ---- the plan: which worker runs which partition ----------------------------------------------------------------
def plan(partitions: list[tuple[str, str, int]], workers: list[str]) -> dict[tuple[str, str, int], str]:
    """The worker of each (model, relation, shot). With at least as many models as workers, all of a model's
    partitions go to one worker (models balanced by partition count); with fewer, each model gets a share of
    the workers in proportion to its partitions (at least one) and its partitions are dealt over them."""
    if not workers:
        raise ValueError("a Dask plan needs at least one worker")
    models: dict[str, list[tuple[str, str, int]]] = {}
    for p in partitions:
        models.setdefault(p[0], []).append(p)
    out: dict[tuple[str, str, int], str] = {}
    if len(models) >= len(workers):
        load = {w: 0 for w in workers}
        for model, parts in sorted(models.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            w = min(workers, key=lambda w: (load[w], workers.index(w)))
            load[w] += len(parts)
            out |= {p: w for p in parts}
        return out
    total = len(partitions)
    shares = {m: max(1, round(len(parts) * len(workers) / total)) for m, parts in models.items()}
    while sum(shares.values()) > len(workers):  # rounding up can overcommit: take from the largest share
        shares[max(shares, key=lambda m: (shares[m], m))] -= 1
    start = 0
    for model, parts in sorted(models.items()):
        mine = workers[start:start + shares[model]]
        start += shares[model]
        out |= {p: mine[i % len(mine)] for i, p in enumerate(parts)}
    return out


# ---- the driver: submit, collect --------------------------------------------------------------------------------
def _api_url() -> str | None:
    """The Prefect API this process uses (the ephemeral server's URL when there is no configured one)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.client.api_url) if ctx is not None and ctx.client is not None else None


def run_on_dask(stage: str, config, models: list, relations: list, shots: list[int], store_root: str, run_id: str,
                force: bool, options: ClusterOptions, progress) -> tuple[list[dict], dict[str, str], dict, list[str]]:
    """Run every partition of ``stage`` on Dask; returns (partitions in sweep order, refused models, timings,
    selection notes). ``models``: the sweep's ``ModelHandle``s (only their references travel to the workers)."""
    import dask
    from prefect_dask import DaskTaskRunner

    keys = [(m.model_id, r.name, s) for m in models for r in relations for s in shots]
    args = {(m.model_id, r.name, s): (m, r, s) for m in models for r in relations for s in shots}
    if options.address:
        runner = DaskTaskRunner(address=options.address)
        threads = options.threads
    else:
        threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
        # memory_limit 0: a partition's memory is torch's, not Dask-managed data, so Dask's pausing at 80% of a
        # per-worker share (it paused Gemma's final layer) only slows it down; silence_logs: Dask's own
        # warnings stay off the command's output unless debugging (FACTRECALL_DEBUG=1)
        from factrecall.paths import debug

        runner = DaskTaskRunner(cluster_kwargs={"n_workers": options.workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None, "memory_limit": 0,
                                                "silence_logs": logging.WARNING if debug() else logging.CRITICAL})
    url = _api_url()
    saved = os.environ.get("PREFECT_API_URL")
    if url and not options.address:
        os.environ["PREFECT_API_URL"] = url  # the local workers report to this process's Prefect API
    bar = progress.bar(f"{stage}: {len(keys)} partitions on Dask")
    bar(total=len(keys))
    results: dict[tuple, dict] = {}
    started = time.perf_counter()
    try:
        with runner:
            workers = sorted(runner.client.scheduler_info()["workers"])
            placement = plan(keys, workers)
            futures = {}
            for key in keys:
                model, relation, shot = args[key]
                with dask.annotate(workers=[placement[key]], allow_other_workers=True):  # an idle worker may steal
                    futures[key] = runner.submit(partition_on_worker, {
                        "store_root": store_root, "run_id": run_id, "stage": stage, "config": config,
                        "model_ref": model.ref, "dtype": model.dtype, "device": model.device, "relation": relation,
                        "shot": shot, "force": force, "threads": threads})
            for key, future in futures.items():
                results[key] = future.result()
                bar(advance=1)
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
    bar(done=True, status=f"{time.perf_counter() - started:.0f} s")
    partitions, refused, timings, notes = [], {}, {}, []
    for key in keys:
        out = results[key]
        notes += out.pop("notes")
        worker, loaded = out.pop("worker"), out.pop("loaded")
        if loaded is not None:
            timings[f"load:{key[0]}@{worker}"] = round(loaded, 3)
        if "refused" in out:
            refused.setdefault(out["model"], out["refused"])
        else:
            partitions.append(out | {"worker": worker})
    return partitions, refused, timings, notes
