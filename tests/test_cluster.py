"""Partitions on Dask (flows/cluster.py): the placement plan, and a sweep on a local cluster of two worker
processes that writes the same store as the serial run, each worker loading each of its models once."""

from __future__ import annotations

import polars as pl
import pytest

from factrecall.flows.cluster import plan
from factrecall.stages import STAGES
from factrecall.storage.query import connect
from tiny_models import save_tiny_model_dir


def _parts(models: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(m, f"r{i // 3}", i % 3) for m, n in models.items() for i in range(n)]


def test_plan_keeps_a_model_on_one_worker_when_there_are_enough_models():
    parts = _parts({"a": 6, "b": 6, "c": 3})
    placed = plan(parts, ["w1", "w2"])
    assert set(placed) == set(parts)
    by_model = {m: {placed[p] for p in parts if p[0] == m} for m in "abc"}
    assert all(len(ws) == 1 for ws in by_model.values())  # each model loads on one worker only
    load = {w: sum(1 for p in parts if placed[p] == w) for w in ("w1", "w2")}
    assert sorted(load.values()) == [6, 9]  # the two big models apart, the small one with one of them


def test_plan_spreads_a_lone_model_over_every_worker():
    parts = _parts({"a": 9})
    placed = plan(parts, ["w1", "w2", "w3"])
    assert {w: list(placed.values()).count(w) for w in ("w1", "w2", "w3")} == {"w1": 3, "w2": 3, "w3": 3}
    two = plan(_parts({"a": 8, "b": 2}), ["w1", "w2", "w3", "w4"])
    workers_of = {m: {w for p, w in two.items() if p[0] == m} for m in "ab"}
    assert len(workers_of["a"]) == 3 and len(workers_of["b"]) == 1 and not workers_of["a"] & workers_of["b"]
    with pytest.raises(ValueError):
        plan(parts, [])


def _table(root, table: str, schema) -> pl.DataFrame:
    """The stored rows of ``table``: partition columns and the table's own columns (not the ids of results, nor
    wall times)."""
    cols = ["model", "relation", "shot", *(n for n in schema.names if not n.startswith("seconds"))]
    frame = connect(root).sql(f"SELECT {', '.join(cols)} FROM {table}").pl()
    return frame.sort([c for c, t in frame.schema.items() if not isinstance(t, (pl.List, pl.Array))])


@pytest.mark.flow
def test_a_dask_sweep_writes_the_store_of_the_serial_sweep(tmp_path):
    from factrecall.flows.stage_flow import stage_flow

    models = [save_tiny_model_dir(f, tmp_path / f"tiny-{f}") for f in ("gpt2", "qwen2")]
    kwargs = dict(models=models, relations=["paper.capital", "lre.country_language"], shots=[0, 1],
                  settings={"max_prompts": 8, "n_boot": 50, "batch_size": 4}, show_progress=False)
    serial = stage_flow("heads", store_root=str(tmp_path / "serial"), **kwargs)
    dask = stage_flow("heads", store_root=str(tmp_path / "dask"), cluster={"workers": 2}, **kwargs)
    assert serial["refused"] == dask["refused"] == {}
    key = lambda p: (p["model"], p["relation"], p["shot"])  # noqa: E731
    assert sorted(map(key, dask["partitions"])) == sorted(map(key, serial["partitions"]))
    assert {p["status"] for p in dask["partitions"]} == {"written"}
    # each worker loaded each model it ran exactly once (placement is a preference: an idle worker may steal)
    pairs = {(p["model"], p["worker"]) for p in dask["partitions"]}
    loads = sorted(k for k in dask["timings"] if k.startswith("load:"))
    assert loads == sorted(f"load:{m}@{w}" for m, w in pairs)
    assert len({w for _, w in pairs}) == 2 and len(loads) < len(dask["partitions"])
    # the same rows and numbers as the serial run, table by table
    for table, schema in (STAGES["capture"].tables | STAGES["heads"].tables).items():
        if table == "plots":
            continue
        a, b = _table(tmp_path / "serial", table, schema), _table(tmp_path / "dask", table, schema)
        assert a.height == b.height > 0, table
        assert a.equals(b), table
    # the run is one run: its manifest and records name every partition, and a rerun on Dask reuses them all
    again = stage_flow("heads", store_root=str(tmp_path / "dask"), cluster={"workers": 2}, **kwargs)
    assert {p["status"] for p in again["partitions"]} == {"skipped"}
    con = connect(tmp_path / "dask")
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT count(DISTINCT model) FROM models").fetchone()[0] == 2
