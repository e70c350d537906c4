"""Store: partition keys, streaming writes, atomic commit, crash recovery, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factrecall.storage.query import connect
from factrecall.storage.schema import TABLES, schema, vector_type
from factrecall.storage.store import PartitionKey, SchemaMismatchError, Store

KEY = PartitionKey("tiny-gpt2", "capital", 2)
OTHER = PartitionKey("tiny-gpt2", "capital", 0)
D = 4


def prompts_batch(ids, tag="v1") -> pa.RecordBatch:
    """A small `logits`-like batch (prompt_id, variant, p_answer, vector) with rows ids."""
    ids = np.asarray(ids, np.int32)
    vec = np.repeat(ids[:, None].astype(np.float32), D, axis=1)
    return pa.RecordBatch.from_pydict({
        "prompt_id": pa.array(ids, pa.int32()),
        "variant": pa.array([tag] * len(ids)),
        "p_answer": pa.array(ids.astype(np.float32) / 100),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), D),
    })


def write_partition(store: Store, key: PartitionKey, ids, tag: str, tables=("prompts", "logits"), h="h1"):
    with store.open_partition(key, input_hash=h, run_id=f"run-{tag}") as w:
        for t in tables:
            for chunk in np.array_split(np.asarray(ids), 3):
                w.write(t, prompts_batch(chunk, tag))
        w.commit({"n_rows": len(ids)})


def visible(root: Path, table: str = "prompts", key: PartitionKey = KEY) -> list[tuple]:
    """Rows of `table` for `key` as seen through the SQL views."""
    con = connect(root)
    try:
        return con.execute(
            f"SELECT prompt_id, variant FROM {table} WHERE model = ? AND relation = ? AND shot = ? ORDER BY prompt_id",
            [key.model, key.relation, key.shot],
        ).fetchall()
    except Exception as e:  # the view does not exist yet (no files): nothing visible
        assert "is empty" in str(e)
        return []


def staged(root: Path) -> list[Path]:
    """Staged data files (not the writers' lock files)."""
    area = root / "_staging"
    return [p for p in area.rglob("*.parquet")] if area.exists() else []


# -- keys and validation -------------------------------------------------------------------------

def test_partition_key_path_and_validation(tmp_path):
    assert KEY.path() == "model=tiny-gpt2/relation=capital/shot=2"
    for bad in ("a/b", "a b", "", "x=y", "..", "é"):
        with pytest.raises(ValueError, match=r"\[A-Za-z0-9_\.-\]\+") as e:
            PartitionKey(bad, "r", 0)
        assert repr(bad) in str(e.value) and "model" in str(e.value)
    with pytest.raises(ValueError, match="relation"):
        PartitionKey("m", "rel/x", 0)
    for shot in (-1, "2", 1.5, True):
        with pytest.raises(ValueError, match="shot"):
            PartitionKey("m", "r", shot)
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="model"):
        store.write_model_table("model_info", "bad model", pa.table({"x": [1]}))
    with pytest.raises(ValueError, match="table"):
        with store.open_partition(KEY, "h", "r") as w:
            w.write("../evil", prompts_batch([1]))


def test_schemas():
    assert vector_type(5) == pa.list_(pa.float32(), 5)
    for t in TABLES + ("model_info",):
        s = schema(t, 7)
        assert not {"model", "relation", "shot"} & set(s.names) or t == "model_info"
    assert schema("heads", 7).field("output").type == pa.list_(pa.float32(), 7)
    assert schema("heads", 7).field("layer").type == pa.int16()
    assert schema("resid_end", 3).field("pos_embed").nullable
    assert schema("prompts", 3).field("demo_subjects").type == pa.list_(pa.string())
    with pytest.raises(ValueError, match="unknown table"):
        schema("nope", 3)


# -- writing and committing ----------------------------------------------------------------------

def test_commit_round_trip_and_is_committed(tmp_path):
    store = Store(tmp_path)
    write_partition(store, KEY, range(10), "v1")
    f = tmp_path / "prompts" / KEY.path() / "part-0.parquet"
    assert pq.ParquetFile(f).num_row_groups == 3  # one row group per write()
    back = pq.read_table(f)
    assert back.schema.field("vec").type == vector_type(D)
    assert back.column("prompt_id").to_pylist() == list(range(10))
    assert store.is_committed(KEY, "h1")
    assert not store.is_committed(KEY, "other-hash")
    assert not store.is_committed(OTHER, "h1")
    (rec,) = store.committed()
    assert rec["tables"] == ["logits", "prompts"] and rec["n_rows"] == 10 and rec["run_id"] == "run-v1"
    assert (rec["model"], rec["relation"], rec["shot"], rec["input_hash"]) == ("tiny-gpt2", "capital", 2, "h1")
    assert rec["committed_at"].endswith("+00:00")
    assert visible(tmp_path) == [(i, "v1") for i in range(10)]
    # A listed table whose file vanished makes the partition not committed.
    (tmp_path / "logits" / KEY.path() / "part-0.parquet").unlink()
    assert not store.is_committed(KEY, "h1")
    assert not staged(tmp_path)


def test_rerun_replaces_never_appends(tmp_path):
    store = Store(tmp_path)
    write_partition(store, KEY, range(10), "v1", tables=("prompts", "logits"))
    write_partition(store, OTHER, range(4), "o1")
    write_partition(store, KEY, range(5, 8), "v2", tables=("prompts",), h="h2")
    assert visible(tmp_path) == [(i, "v2") for i in range(5, 8)]
    # logits was in the old commit, not the new one: it is gone, not left over.
    assert visible(tmp_path, "logits") == []
    assert not (tmp_path / "logits" / KEY.path()).exists()
    assert visible(tmp_path, "logits", OTHER) == [(i, "o1") for i in range(4)]
    assert store.is_committed(KEY, "h2") and not store.is_committed(KEY, "h1")
    assert len(store.committed()) == 2
    assert not (tmp_path / "_trash").exists() or not any((tmp_path / "_trash").iterdir())


def test_schema_mismatch_is_an_error(tmp_path):
    store = Store(tmp_path)
    with store.open_partition(KEY, "h", "r") as w:
        w.write("prompts", prompts_batch([1, 2]))
        bad = prompts_batch([3]).drop_columns(["p_answer"])
        with pytest.raises(SchemaMismatchError, match="prompts: batch schema differs"):
            w.write("prompts", bad)
        other = pa.RecordBatch.from_pydict({"prompt_id": pa.array([1], pa.int64())})
        with pytest.raises(SchemaMismatchError):
            w.write("prompts", other)
        with pytest.raises(ValueError, match="partition keys"):
            w.write("logits", pa.RecordBatch.from_pydict({"model": ["x"]}))
        w.write("prompts", pa.Table.from_batches([prompts_batch([3])]))  # a Table with the same schema is fine
        w.commit({})
    assert visible(tmp_path) == [(1, "v1"), (2, "v1"), (3, "v1")]


def test_model_table_and_runs(tmp_path):
    store = Store(tmp_path)
    info = lambda n: pa.table({"model": ["m1"], "n_layers": pa.array([n], pa.int32())})  # noqa: E731
    store.write_model_table("model_info", "m1", info(2))
    store.write_model_table("model_info", "m1", info(3))  # replaces
    with pytest.raises(ValueError, match="m1"):
        store.write_model_table("model_info", "m2", info(3))
    files = list((tmp_path / "model_info").rglob("*"))
    assert [p.name for p in files if p.is_file()] == ["part-0.parquet"]
    store.write_run({"run_id": "r1", "seed": 3, "config": {"a": [1, 2]}, "packages": {"duckdb": "2"}, "note": None})
    con = connect(tmp_path)
    assert con.execute("SELECT model, n_layers FROM model_info").fetchall() == [("m1", 3)]
    row = con.execute("SELECT run_id, seed, config, packages, note FROM runs").fetchone()
    assert row[:2] == ("r1", 3) and json.loads(row[2]) == {"a": [1, 2]} and row[4] is None
    with pytest.raises(ValueError, match="run_id"):
        store.write_run({"run_id": "a/b"})


# -- crashes and resume --------------------------------------------------------------------------

def test_exception_inside_partition_aborts(tmp_path):
    store = Store(tmp_path)
    write_partition(store, KEY, range(10), "v1")
    with pytest.raises(RuntimeError, match="boom"):
        with store.open_partition(KEY, "h2", "run-v2") as w:
            w.write("prompts", prompts_batch(range(100, 110), "v2"))
            w.write("logits", prompts_batch(range(100, 103), "v2"))
            raise RuntimeError("boom")
    # Old data untouched and still visible; nothing of v2; no staging left.
    assert visible(tmp_path) == [(i, "v1") for i in range(10)]
    assert store.is_committed(KEY, "h1") and not store.is_committed(KEY, "h2")
    assert not staged(tmp_path)
    # Leaving the block without commit also aborts.
    with store.open_partition(OTHER, "h", "r") as w:
        w.write("prompts", prompts_batch([1]))
    assert not store.is_committed(OTHER, "h") and visible(tmp_path, key=OTHER) == []
    write_partition(store, KEY, range(100, 110), "v2", h="h2")
    assert visible(tmp_path) == [(i, "v2") for i in range(100, 110)]


def test_crash_between_table_renames(tmp_path, monkeypatch):
    store = Store(tmp_path)
    write_partition(store, KEY, range(10), "v1")
    write_partition(store, OTHER, range(3), "o1")
    real_rename = os.rename
    moved_in = []

    def flaky_rename(src, dst, *a, **k):
        if "_staging" in str(src):  # staged table -> its place in the store
            moved_in.append(dst)
            if len(moved_in) == 2:
                raise OSError("disk full (simulated)")
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated"):
        write_partition(store, KEY, range(50, 60), "v2", h="h2")
    monkeypatch.setattr(os, "rename", real_rename)
    assert len(moved_in) == 2
    # The first table was swapped in, but without a commit record nothing of KEY is visible.
    assert (tmp_path / "logits" / KEY.path() / "part-0.parquet").exists()
    assert visible(tmp_path, "logits") == [] and visible(tmp_path, "prompts") == []
    assert not store.is_committed(KEY, "h2") and not store.is_committed(KEY, "h1")
    assert visible(tmp_path, key=OTHER) == [(i, "o1") for i in range(3)]  # others unaffected
    Store(tmp_path)
    assert not staged(tmp_path)
    # Resume: the rerun commits and each row appears once.
    write_partition(store, KEY, range(50, 60), "v2", h="h2")
    assert visible(tmp_path, "prompts") == [(i, "v2") for i in range(50, 60)]
    assert visible(tmp_path, "logits") == [(i, "v2") for i in range(50, 60)]
    assert store.is_committed(KEY, "h2")


CHILD = textwrap.dedent("""
    import sys, numpy as np, pyarrow as pa
    from factrecall.storage.store import Store, PartitionKey
    root, n_ready = sys.argv[1], int(sys.argv[2])
    store = Store(root)
    key = PartitionKey("tiny-gpt2", "capital", 2)
    with store.open_partition(key, "h2", "killed") as w:
        i = 0
        while True:
            ids = np.arange(i * 100, (i + 1) * 100, dtype=np.int32)
            w.write("prompts", pa.RecordBatch.from_pydict({
                "prompt_id": ids, "variant": ["v2"] * 100,
                "p_answer": (ids / 100).astype(np.float32),
                "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 4).astype(np.float32)), 4)}))
            i += 1
            if i == n_ready:
                print("ready", flush=True)
""")


def test_kill_9_mid_write_then_rerun(tmp_path):
    store = Store(tmp_path)
    write_partition(store, KEY, range(10), "v1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "50"], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        # While the writer is alive another Store() must not delete its staging.
        Store(tmp_path)
        assert staged(tmp_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert staged(tmp_path)  # the dead writer's leftovers
    assert visible(tmp_path) == [(i, "v1") for i in range(10)]  # old data untouched, nothing partial
    assert not store.is_committed(KEY, "h2")
    Store(tmp_path)  # cleans the dead writer's staging
    assert not staged(tmp_path) and not list((tmp_path / "_staging").glob("*"))
    write_partition(store, KEY, range(300), "v2", h="h2")
    rows = visible(tmp_path)
    assert rows == [(i, "v2") for i in range(300)]  # exactly one copy


def test_live_writer_survives_new_store(tmp_path):
    store = Store(tmp_path)
    with store.open_partition(KEY, "h", "r") as w:
        w.write("prompts", prompts_batch(range(5)))
        Store(tmp_path)  # e.g. a parallel task starting up
        w.write("prompts", prompts_batch(range(5, 8)))
        w.commit({})
    assert visible(tmp_path) == [(i, "v1") for i in range(8)]
