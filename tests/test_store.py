"""The store as a record: results commit atomically (a crash at any point leaves no partial result and
no duplicate after a rerun), concurrent writers keep every result whole, history stays readable,
damaged files are named and isolated, and store paths may hold glob characters."""

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
import pytest

from factrecall.storage import delta
from factrecall.storage.query import QueryError, connect, open_store, run_query
from factrecall.storage.schema import SCHEMAS
from factrecall.storage.store import SchemaMismatchError, Store
from synthetic_store import put, table

KEY = ("tiny-gpt2", "capital", 2)
OTHER = ("tiny-gpt2", "capital", 0)
REPO = Path(__file__).resolve().parent.parent


def logits(ids, tag: float = 0.0) -> pa.Table:
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    return table("logits", dict(
        prompt_id=ids, variant=["clean"] * n, answer_logit=ids.astype(np.float32) + tag,
        p_answer=np.full(n, 0.5, np.float32), answer_rank=np.zeros(n), metric_m=np.full(n, tag, np.float32),
        top1=[True] * n, topk_ids=[[1]] * n, topk_logits=[[1.0]] * n, final_norm_scale=np.ones(n),
        ledger_error=np.zeros(n)))


def prompts(ids) -> pa.Table:
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    return table("prompts", dict(
        prompt_id=ids, variant=["clean"] * n, fact_index=ids, template_index=np.zeros(n), subject=["s"] * n,
        object=["o"] * n, query_subject=["s"] * n, text=[f"p{i}" for i in ids], demo_subjects=[[]] * n,
        source_prompt_id=[None] * n, n_tokens=np.full(n, 3), end_pos=np.full(n, 2), s_pos=np.ones(n),
        s_first_pos=np.ones(n), subject_token_id=np.ones(n), answer_token_id=np.ones(n), answer_token=["o"] * n,
        object_n_tokens=np.ones(n), bos=[False] * n))


def capture(store, key, n, tag=0.0, seed=0, **kw):
    ids = np.arange(n)
    return put(store, "capture", key, {"prompts": prompts(ids), "logits": [logits(c, tag) for c in np.array_split(ids, 3)]},
               n_prompts=n, seed=seed, **kw)


def rows(root, tbl="logits", key=KEY, **kw) -> list[tuple]:
    return connect(root, **kw).execute(
        f"SELECT prompt_id, metric_m FROM {tbl} WHERE model = ? AND relation = ? AND shot = ? ORDER BY prompt_id",
        list(key)).fetchall()


# ------------------------------------------------------------------------------ commit and abort

def test_commit_round_trip_and_one_file_per_table(tmp_path):
    rec = capture(Store(tmp_path), KEY, 6, tag=1.0)
    assert [r[0] for r in rows(tmp_path)] == list(range(6)) and {r[1] for r in rows(tmp_path)} == {1.0}
    assert rec.tables == {"prompts": 6, "logits": 6}
    for tbl in ("prompts", "logits"):
        files = list((tmp_path / tbl).rglob("*.parquet"))
        assert len(files) == 1 and f"result_id={rec.result_id}" in str(files[0])
    con = connect(tmp_path)
    assert con.execute("SELECT result_id, capture_id FROM logits LIMIT 1").fetchall() == [(rec.result_id, rec.result_id)]
    assert con.execute("SELECT status FROM results").fetchall() == [("current",)]


def test_exception_inside_a_result_writes_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing(), store.writer("capture", KEY, {"logits": SCHEMAS["logits"]}) as w:
            w.write("logits", logits([0, 1]))
            raise RuntimeError("boom")
    assert list(tmp_path.rglob("*.parquet")) == []
    assert store.catalog().results == {}


def test_schema_mismatch_is_an_error(tmp_path):
    store = Store(tmp_path)
    with store.writer("capture", KEY, {"logits": SCHEMAS["logits"]}) as w:
        with pytest.raises(SchemaMismatchError, match="logits"):
            w.write("logits", pa.table({"prompt_id": pa.array([1], pa.int32())}))
        with pytest.raises(ValueError, match="writes no table 'heads'"):
            w.write("heads", logits([0]))


@pytest.mark.parametrize("crash", ["before any table", "after one table", "after the record"])
def test_a_crash_at_any_point_leaves_no_partial_result_and_a_rerun_no_duplicates(tmp_path, monkeypatch, crash):
    """Commit order: the tables' transactions, then the result's record, then its selection. A crash before
    any table, between tables (logits committed, prompts not) and after the record: the rerun's result is
    the only one the views show, and nothing of the crashed one is half visible."""
    store = Store(tmp_path)
    capture(store, OTHER, 4)  # an earlier, untouched partition
    real_commit, real_add = delta.commit_files, Store.add_result

    class Crash(BaseException):
        pass

    def commit(path, *a, **k):
        if crash == "before any table" or (crash == "after one table" and Path(path).name == "prompts"):
            raise Crash()
        return real_commit(path, *a, **k)

    def add(self, rec):
        real_add(self, rec)
        if crash == "after the record":
            raise Crash()

    monkeypatch.setattr(delta, "commit_files", commit)
    monkeypatch.setattr(Store, "add_result", add)
    with pytest.raises(Crash):
        capture(store, KEY, 6, tag=1.0)
    monkeypatch.undo()
    logits_log = delta.open_table(tmp_path / "logits")
    committed = sum(1 for f in delta.list_files(logits_log) if f.partition["shot"] == 2)
    assert committed == (0 if crash == "before any table" else 1)  # the state each case means to test
    seen = rows(tmp_path)
    con = connect(tmp_path)
    if crash == "after the record":  # committed but never selected: stored, not shown until selected
        assert seen == [] and con.execute("SELECT status FROM results WHERE shot = 2").fetchall() == [("unselected",)]
    else:
        assert seen == []  # nothing of the interrupted result is visible anywhere
        assert con.execute("SELECT count(*) FROM stored.logits WHERE shot = 2").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM stored.prompts WHERE shot = 2").fetchall()[0][0] == 0
    rerun = capture(Store(tmp_path), KEY, 6, tag=2.0)
    assert rows(tmp_path) == [(i, 2.0) for i in range(6)]
    assert connect(tmp_path).execute(f"SELECT count(*) FROM logits WHERE result_id = '{rerun.result_id}'").fetchall()[0][0] == 6
    assert rows(tmp_path, key=OTHER) == [(i, 0.0) for i in range(4)]
    Store(tmp_path).gc(drop_unselected=True)  # the crash's leftovers go, the current results stay
    assert len(list((tmp_path / "logits").rglob("*.parquet"))) == 2
    assert rows(tmp_path) == [(i, 2.0) for i in range(6)]
    assert open_store(tmp_path).warnings() == []  # gc dropped the records of what it deleted


_WRITER = textwrap.dedent("""
    import sys, pathlib, numpy as np
    sys.path.insert(0, {tests!r})
    from factrecall.storage.store import Store
    from test_store import capture, logits
    store, who = Store(sys.argv[1]), sys.argv[2]
    for shot in (0, 1, 2, 3):  # both writers write the same partitions, concurrently
        capture(store, ("m", "r", shot), 40 + shot, tag=float(who == "b"), run_id=who)
""")


def test_two_concurrent_writers_on_the_same_partitions_keep_every_result_whole(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(tests=str(Path(__file__).parent)))
    root = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(root), who], stderr=subprocess.PIPE)
             for who in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    con = connect(root)
    per_result = con.execute("SELECT shot, result_id, count(*), count(DISTINCT prompt_id) FROM stored.logits "
                             "GROUP BY ALL ORDER BY ALL").fetchall()
    assert len(per_result) == 8  # 4 partitions x 2 writers
    assert all(n == k == 40 + shot for shot, _, n, k in per_result)
    shown = con.execute("SELECT shot, count(*), count(DISTINCT result_id) FROM logits GROUP BY shot ORDER BY shot").fetchall()
    assert shown == [(s, 40 + s, 1) for s in range(4)]  # the default view shows one whole result per key
    history = delta.open_table(root / "logits").history()
    assert len(history) == 8  # one transaction per result
    for version in range(8):  # every version is readable
        assert delta.open_table(root / "logits", version).version() == version


# -------------------------------------------------------------------------------- time travel

def test_as_of_a_run_answers_from_the_store_as_it_was(tmp_path):
    store = Store(tmp_path)
    capture(store, KEY, 5, tag=1.0, run_id="r1")
    with store.writing():
        store.write_run({"run_id": "r1", "kind": "capture", "started_at": "2026-01-01T00:00:00+00:00",
                         "finished_at": "2026-01-01T00:01:00+00:00"})
    capture(store, KEY, 3, tag=2.0, seed=1, run_id="r2")
    with store.writing():
        store.write_run({"run_id": "r2", "kind": "capture", "started_at": "2026-01-02T00:00:00+00:00",
                         "finished_at": "2026-01-02T00:01:00+00:00"})
    assert rows(tmp_path) == [(i, 2.0) for i in range(3)]
    assert rows(tmp_path, as_of="r1") == [(i, 1.0) for i in range(5)]
    assert connect(tmp_path, as_of="r1").execute("SELECT count(*) FROM results").fetchall()[0][0] == 1
    with pytest.raises(QueryError, match="no such run"):
        run_query(tmp_path, "SELECT 1", as_of="nope")
    with pytest.raises(Exception, match="read-only"):
        capture(Store(tmp_path, as_of="r1"), KEY, 2)
    # a run sees itself in `runs` as of itself
    assert [r[0] for r in connect(tmp_path, as_of="r1").execute("SELECT run_id FROM runs").fetchall()] == ["r1"]
    assert len(connect(tmp_path, as_of="r2").execute("SELECT run_id FROM runs").fetchall()) == 2
    # gc ends time travel: the older version's files are gone, and --as-of says so in one line
    Store(tmp_path).gc(drop_unselected=True)
    assert rows(tmp_path) == [(i, 2.0) for i in range(3)]
    with pytest.raises(QueryError, match="gc"):
        run_query(tmp_path, "SELECT * FROM logits", as_of="r1")
    assert open_store(tmp_path).warnings() == []


# --------------------------------------------------------------------------------- integrity

def _file_of(root: Path, tbl: str, rec) -> Path:
    (path,) = [p for p in (root / tbl).rglob("*.parquet") if f"result_id={rec.result_id}" in str(p)]
    return path


@pytest.mark.parametrize("damage", ["truncated", "deleted", "unreadable", "corrupt, same size"])
def test_a_damaged_file_is_named_and_the_rest_stays_queryable(tmp_path, monkeypatch, damage):
    store = Store(tmp_path)
    bad = capture(store, KEY, 6, tag=1.0)
    capture(store, OTHER, 4)
    path = _file_of(tmp_path, "logits", bad)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "deleted":
        path.unlink()
    elif damage == "unreadable":  # as root, chmod 0 would not stop reading: the check's probe is told so
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    else:  # the footer's last bytes overwritten: the size check cannot see it, reading the file can
        data = bytearray(path.read_bytes())
        data[-5:] = b"XXXXX"
        path.write_bytes(bytes(data))
    warned = []
    assert "4" in run_query(tmp_path, "SELECT count(*) AS n FROM logits", fmt="csv", warn=warned.append)
    if damage == "corrupt, same size":  # found when a query reads it: left out, the query retried, named
        (warning,) = warned
        assert str(path) in warning and "unreadable" in warning and "shot=2" in warning
        return
    view = open_store(tmp_path)
    assert warned == view.warnings()
    (warning,) = view.warnings()
    assert str(path) in warning and "model=tiny-gpt2/relation=capital/shot=2" in warning
    assert {"truncated": "truncated", "deleted": "missing", "unreadable": "unreadable"}[damage] in warning
    # every other result and table still answers, the damaged result is left out of all its tables
    assert view.sql("SELECT shot, count(*) FROM logits GROUP BY shot").fetchall() == [(0, 4)]
    assert view.sql("SELECT shot, count(*) FROM prompts GROUP BY shot").fetchall() == [(0, 4)]
    assert view.sql("SELECT 1").fetchall() == [(1,)]
    assert view.sql("SELECT result_id, status FROM results WHERE shot = 2").fetchall() == [(bad.result_id, "damaged")]
    assert view.sql("SELECT table_name, result_id FROM damaged").fetchall() == [("logits", bad.result_id)]


def test_an_unreadable_log_names_the_table_and_other_tables_still_work(tmp_path):
    store = Store(tmp_path)
    hit = capture(store, KEY, 3)
    put(store, "capture", OTHER, {"prompts": prompts(range(4))}, n_prompts=4)  # has no logits rows
    (log,) = sorted((tmp_path / "logits" / "_delta_log").glob("*.json"))
    log.write_text("{ not json")
    view = open_store(tmp_path)
    assert any("logits" in w and "_delta_log" in w for w in view.warnings())
    # the result with logits rows cannot be verified: left out; the other one answers
    assert view.sql("SELECT shot, count(*) FROM prompts GROUP BY shot").fetchall() == [(0, 4)]
    assert view.sql(f"SELECT status FROM results WHERE result_id = '{hit.result_id}'").fetchall() == [("damaged",)]
    with pytest.raises(QueryError, match="logits.*cannot be read"):
        run_query(tmp_path, "SELECT * FROM logits")


@pytest.mark.parametrize("name", ["a*b", "x[1]", "q?"])
def test_store_paths_with_glob_characters(tmp_path, name):
    root = tmp_path / name / "store"
    decoy = tmp_path / "aXb" / "store"  # what "a*b" would match as a glob
    capture(Store(decoy), KEY, 2)
    capture(Store(root), KEY, 5, tag=3.0)
    assert rows(root) == [(i, 3.0) for i in range(5)]
    assert connect(root).execute("SELECT count(*) FROM stored.logits").fetchall()[0][0] == 5


def test_kill_9_while_a_file_is_being_written_then_rerun(tmp_path):
    """A real kill -9 with a result's file open (waiting on the file, not on a timer)."""
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from factrecall.storage.schema import SCHEMAS
        from factrecall.storage.store import Store
        from test_store import logits
        store = Store(sys.argv[1])
        with store.writing(), store.writer("capture", ("m", "r", 0), {{"logits": SCHEMAS["logits"]}}) as w:
            for i in range(10 ** 6):
                w.write("logits", logits([i]))
                time.sleep(0.01)
    """))
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stderr=subprocess.PIPE)
    try:
        while not list(root.glob("logits/**/*.parquet")):
            assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert list(root.glob("logits/**/*.parquet"))  # the orphan is there, invisible
    assert Store(root).catalog().results == {}
    capture(Store(root), ("m", "r", 0), 7)
    assert rows(root, key=("m", "r", 0)) == [(i, 0.0) for i in range(7)]
    assert Store(root).gc()["files_deleted"] >= 1
    assert len(list(root.glob("logits/**/*.parquet"))) == 1


def test_gc_refuses_while_a_writer_is_active(tmp_path):
    store = Store(tmp_path)
    capture(store, KEY, 2)
    with store.writing():
        with pytest.raises(Exception, match="writing"):
            Store(tmp_path).gc()


def test_a_run_that_did_not_finish_keeps_its_start_row_and_cannot_be_read_as_of(tmp_path):
    """A sweep writes its run row when it starts and again when it ends: a run stopped half-way still says which
    code and settings produced the results it committed; `runs` shows each run once (its latest row)."""
    store = Store(tmp_path)
    start = {"run_id": "done", "kind": "capture", "started_at": "2026-01-01T00:00:00+00:00", "code_version": "0.1+a"}
    with store.writing():
        store.write_run(start)
        store.write_run({"run_id": "stopped", "kind": "capture", "started_at": "2026-01-01T00:00:30+00:00",
                         "code_version": "0.1+b"})
        late = {"run_id": "late", "kind": "capture", "started_at": "2026-01-01T00:00:40+00:00"}
        store.write_run(late)
    capture(store, KEY, 2, run_id="done")
    with store.writing():
        store.write_run(start | {"finished_at": "2026-01-01T00:01:00+00:00", "partitions": [{"shot": 0}]})
        store.write_run(late | {"finished_at": "2026-01-01T00:02:00+00:00"})
    got = connect(tmp_path).execute("SELECT run_id, code_version, finished_at IS NULL, partitions, versions IS NULL "
                                    "FROM runs ORDER BY run_id").fetchall()
    assert got == [("done", "0.1+a", False, '[{"shot": 0}]', False), ("late", None, False, None, False),
                   ("stopped", "0.1+b", True, None, True)]
    assert rows(tmp_path, as_of="done") == [(0, 0.0), (1, 0.0)]  # the end row's versions, not the start row's
    # as of "done", the run that ended after it is shown as it was then: started, not finished
    as_of = connect(tmp_path, as_of="done").execute("SELECT run_id, finished_at IS NULL FROM runs ORDER BY run_id")
    assert as_of.fetchall() == [("done", False), ("late", True), ("stopped", True)]
    with pytest.raises(QueryError, match="did not finish"):
        run_query(tmp_path, "SELECT 1", as_of="stopped")
    with pytest.raises(QueryError, match=r"recent runs: late, done \("):  # each once, only runs one can read as of
        run_query(tmp_path, "SELECT 1", as_of="nope")


def test_run_manifest_records_the_table_versions(tmp_path):
    store = Store(tmp_path)
    capture(store, KEY, 2)
    capture(store, OTHER, 2)
    with store.writing():
        store.write_run({"run_id": "r", "kind": "capture", "started_at": "2026-01-01T00:00:00+00:00",
                         "finished_at": "2026-01-01T00:01:00+00:00"})
    versions = json.loads(connect(tmp_path).execute("SELECT versions FROM runs").fetchall()[0][0])
    assert versions["logits"] == 1 and versions["_results"] == 1 and versions["_selections"] == 1
    assert "runs" not in versions  # its own row is the first version of runs; as-of reads runs up to it


@pytest.mark.parametrize("damage", ["truncated", "corrupt, same size"])
def test_a_damaged_catalogue_file_is_named_and_the_other_results_stay(tmp_path, damage):
    store = Store(tmp_path)
    capture(store, KEY, 6, tag=1.0)
    capture(store, OTHER, 4)
    files = sorted((tmp_path / "_results").glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    path = files[0]  # the first result's record
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:50]
    else:
        data[-5:] = b"XXXXX"  # the size check cannot see it; reading the table finds it
    path.write_bytes(bytes(data))
    view = open_store(tmp_path)
    assert any(str(path) in w for w in view.warnings())
    assert view.sql("SELECT shot, count(*) FROM logits GROUP BY shot").fetchall() == [(OTHER[2], 4)]


def test_gc_compacts_the_catalogue_and_keeps_every_record(tmp_path):
    store = Store(tmp_path)
    for shot in range(4):
        capture(store, ("tiny-gpt2", "capital", shot), 3)
    before = open_store(tmp_path)
    results = before.sql("SELECT result_id, status FROM results ORDER BY result_id").fetchall()
    rows = before.sql("SELECT shot, count(*) FROM logits GROUP BY shot ORDER BY shot").fetchall()
    assert len(list((tmp_path / "_results").glob("*.parquet"))) == 4
    Store(tmp_path).gc()
    after = open_store(tmp_path)
    assert after.sql("SELECT result_id, status FROM results ORDER BY result_id").fetchall() == results
    assert after.sql("SELECT shot, count(*) FROM logits GROUP BY shot ORDER BY shot").fetchall() == rows
    for table in ("_results", "_selections"):
        assert len(list((tmp_path / table).glob("*.parquet"))) == 1, table  # compacted, history vacuumed
    assert after.warnings() == []


def test_compaction_waits_for_enough_files_and_keeps_earlier_versions_readable(tmp_path):
    store = Store(tmp_path)
    for shot in range(2):
        capture(store, ("tiny-gpt2", "capital", shot), 3)
    assert store.compact(min_files=3) == []  # two files each: left alone
    capture(store, ("tiny-gpt2", "capital", 2), 3)
    version = delta.open_table(tmp_path / "_results").version()
    assert set(store.compact(min_files=3)) == {"_results", "_selections"}
    assert len(delta.list_files(delta.open_table(tmp_path / "_results"))) == 1
    old = delta.open_table(tmp_path / "_results", version)  # time travel still reads the three files
    assert len(delta.list_files(old)) == 3
    assert delta.scan(tmp_path / "_results", version).num_rows == 3 == delta.scan(tmp_path / "_results").num_rows
    assert open_store(tmp_path).sql("SELECT count(*) FROM results").fetchall() == [(3,)]
