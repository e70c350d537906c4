"""Results are pinned to their exact inputs (docs/METHOD.md §8): other settings never replace a result,
analysis stages reuse a compatible capture, a stage whose capture is no longer selected is stale until
it is recomputed, and ids of files never collide."""

from __future__ import annotations

import dataclasses
import json

import pytest

from factrecall.flows.runner import ModelHandle, Runner, identity, run_stage
from factrecall.stages import STAGES
from factrecall.storage.query import connect
from factrecall.storage.store import Store
from factrecall.tasks.capture_stage import CaptureConfig
from factrecall.tasks.heads_stage import HeadsConfig
from factrecall.tasks.models import resolve
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model, save_tiny_model_dir

REL = "paper.capital"


@pytest.fixture(scope="module")
def lm():
    return loaded_tiny_model("llama")


def _count(root, sql):
    return connect(root).execute(sql).fetchall()[0][0]


def test_an_analysis_stage_reuses_a_larger_capture_instead_of_replacing_it(lm, tmp_path):
    rel = get_relation(REL)
    cap = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=12))
    heads = run_stage(tmp_path, "heads", lm, rel, 0, HeadsConfig(max_prompts=5, n_boot=20))
    con = connect(tmp_path)
    assert con.execute("SELECT stage, count(*) FROM results GROUP BY stage ORDER BY stage").fetchall() == \
        [("capture", 1), ("heads", 1)]  # no second capture
    assert con.execute("SELECT count(*) FROM logits").fetchall()[0][0] == 12  # the 12-prompt capture is still shown
    assert con.execute("SELECT count(DISTINCT prompt_id), any_value(capture_id) FROM head_prompts").fetchall() == \
        [(5, cap.result_id)]
    assert con.execute("SELECT status FROM results WHERE stage = 'heads'").fetchall() == [("current",)]
    upstream = con.execute(f"SELECT upstream FROM results WHERE result_id = '{heads.result_id}'").fetchall()[0][0]
    assert [(u["stage"], u["result_id"], u["n_prompts"]) for u in upstream] == [("capture", cap.result_id, 5)]
    # m_clean (the heads stage's own forward passes) agrees with the shown capture's metric M
    worst = con.execute("""SELECT max(abs(h.m_clean - l.metric_m)) FROM head_prompts h JOIN logits l
                           USING (model, relation, shot, prompt_id) WHERE l.variant = 'clean'""").fetchall()[0][0]
    assert worst < 1e-4


def test_an_analysis_stage_reuses_a_capture_with_more_variants(lm, tmp_path):
    rel = get_relation(REL)
    run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=6, variants=("clean", "subject_corrupt")))
    run_stage(tmp_path, "heads", lm, rel, 0, HeadsConfig(max_prompts=6, n_boot=20))
    assert _count(tmp_path, "SELECT count(*) FROM results WHERE stage = 'capture'") == 1
    assert connect(tmp_path).execute("SELECT variant, count(*) FROM logits GROUP BY ALL ORDER BY ALL").fetchall() == \
        [("clean", 6), ("subject_corrupt", 6)]  # not recaptured clean-only


def test_a_stage_is_stale_when_its_capture_is_no_longer_selected_and_recomputed_next(lm, tmp_path):
    rel = get_relation(REL)
    store = Store(tmp_path)
    run_stage(store, "heads", lm, rel, 1, HeadsConfig(max_prompts=8, n_boot=20))
    runner = Runner(store, "seed1")
    with store.writing():
        runner.run("capture", CaptureConfig(max_prompts=8, seed=1), ModelHandle("x", loaded=lm), rel, 1)
    (note,) = runner.notes
    assert "capture now shows result" in note and "seed 1" in note and "seed 0" in note
    (stale,) = runner.stale_notes()
    assert stale.startswith(f"stale: heads of {lm.model_id}/{REL}/shot=1") and "factrecall heads" in stale
    con = connect(tmp_path)
    assert con.execute("SELECT stage FROM stale").fetchall() == [("heads",)]
    assert con.execute("SELECT count(*) FROM head_prompts").fetchall()[0][0] == 0  # never shown as current
    # the next run of the stage (now with seed 1) recomputes it on the selected capture
    again = run_stage(store, "heads", lm, rel, 1, HeadsConfig(max_prompts=8, n_boot=20, seed=1))
    assert again.status == "written"
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM stale").fetchall()[0][0] == 0
    joined = con.execute("""SELECT count(*), max(abs(h.m_clean - l.metric_m)) FROM
                            (SELECT DISTINCT prompt_id, m_clean, model, relation, shot FROM head_prompts) h
                            JOIN logits l USING (model, relation, shot, prompt_id)""").fetchall()[0]
    assert joined[0] == 8 and joined[1] < 1e-4
    # asking for seed 0 again re-selects the seed-0 capture and heads (nothing recomputed), consistently
    back = run_stage(store, "heads", lm, rel, 1, HeadsConfig(max_prompts=8, n_boot=20))
    assert back.status == "skipped"
    con = connect(tmp_path)
    assert con.execute("SELECT DISTINCT r.seed FROM logits JOIN results r USING (result_id)").fetchall() == [(0,)]
    assert con.execute("""SELECT max(abs(h.m_clean - l.metric_m)) FROM head_prompts h
                          JOIN logits l USING (model, relation, shot, prompt_id)""").fetchall()[0][0] < 1e-4


def test_dtype_is_part_of_the_model_identity(tmp_path):
    directory = save_tiny_model_dir("llama", tmp_path / "models" / "tiny")
    rel = get_relation(REL)
    for dtype in ("float32", "float16"):
        handle = ModelHandle(directory, dtype, "cpu", cache_dir=tmp_path / "cache")
        store = Store(tmp_path / "s")
        with store.writing():
            Runner(store, dtype).run("capture", CaptureConfig(max_prompts=4), handle, rel, 0)
    rows = connect(tmp_path / "s").execute(
        "SELECT DISTINCT model, dtype FROM model_info ORDER BY model").fetchall()
    base = rows[0][0]
    assert rows == [(base, "float32"), (base + ".fp16", "float16")]  # both shown, each described right
    assert _count(tmp_path / "s", "SELECT count(*) FROM logits") == 8


def test_user_files_with_the_same_name_are_two_partitions(lm, tmp_path):
    paths = []
    for folder, capital in (("d1", "Paris"), ("d2", "Lyon")):
        path = tmp_path / folder / "facts.jsonl"
        path.parent.mkdir()
        path.write_text("\n".join(json.dumps({"subject": s, "object": o, "template": "The capital of {} is"})
                                  for s, o in (("France", capital), ("Spain", "Madrid"), ("Italy", "Rome"))) + "\n")
        paths.append(path)
    for p in paths:
        run_stage(tmp_path / "s", "capture", lm, get_relation(str(p)), 0, CaptureConfig())
    rows = connect(tmp_path / "s").execute(
        "SELECT relation, count(*), list(DISTINCT object ORDER BY object) FROM prompts GROUP BY relation").fetchall()
    assert len(rows) == 2 and all(r[0].startswith("user.facts-") for r in rows)
    assert sorted(r[2] for r in rows) == [["Lyon", "Madrid", "Rome"], ["Madrid", "Paris", "Rome"]]


def test_model_files_with_the_same_name_get_different_ids(tmp_path):
    a = save_tiny_model_dir("llama", tmp_path / "a" / "tiny")
    b = save_tiny_model_dir("gpt2", tmp_path / "b" / "tiny")
    ida, idb = resolve(a, tmp_path / "cache")[0], resolve(b, tmp_path / "cache")[0]
    assert ida != idb and ida.startswith("tiny-") and idb.startswith("tiny-")


def test_the_input_hash_covers_the_stage_not_the_repository(lm, monkeypatch):
    rel = get_relation(REL)
    handle = ModelHandle("x", loaded=lm)
    config = HeadsConfig(max_prompts=5)
    before = identity(STAGES["heads"], config, handle, rel, 0)
    monkeypatch.setattr("factrecall.version.code_version", lambda: "another+edit")  # any other file changed
    assert identity(STAGES["heads"], config, handle, rel, 0) == before
    bumped = dataclasses.replace(STAGES["heads"], version=STAGES["heads"].version + 1)
    assert identity(bumped, config, handle, rel, 0).input_hash != before.input_hash
    assert identity(STAGES["heads"], dataclasses.replace(config, batch_size=3), handle, rel, 0) == before
    assert identity(STAGES["heads"], dataclasses.replace(config, coverage=0.5), handle, rel, 0) != before


def test_a_capture_family_ignores_only_the_coverage_settings(lm):
    rel = get_relation(REL)
    handle = ModelHandle("x", loaded=lm)
    cap = STAGES["capture"]
    base = identity(cap, CaptureConfig(max_prompts=5), handle, rel, 0)
    wider = identity(cap, CaptureConfig(max_prompts=9, variants=("clean", "subject_corrupt")), handle, rel, 0)
    other_seed = identity(cap, CaptureConfig(max_prompts=5, seed=1), handle, rel, 0)
    assert base.family == wider.family != other_seed.family
    assert base.input_hash != wider.input_hash
    assert (base.n_prompts, wider.n_prompts) == (5, 9) and identity(cap, CaptureConfig(), handle, rel, 0).n_prompts == 225


def test_the_next_run_recomputes_a_damaged_result_instead_of_skipping_it(lm, tmp_path):
    rel = get_relation(REL)
    first = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    (path,) = [p for p in (tmp_path / "heads").rglob("*.parquet") if first.result_id in str(p)]
    path.write_bytes(path.read_bytes()[:50])
    again = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    assert again.status == "written" and again.result_id != first.result_id
    con = connect(tmp_path)
    assert con.execute("SELECT count(*), any_value(result_id) FROM heads").fetchall()[0] == (4 * 3 * 4, again.result_id)
    assert dict(con.execute("SELECT result_id, status FROM results").fetchall()) == \
        {first.result_id: "damaged", again.result_id: "current"}


def test_a_stage_is_stale_even_when_the_newly_selected_capture_is_equivalent(lm, tmp_path):
    """A wider capture of the same family is content-equivalent, but the default views never join rows of
    two captures: the heads result computed on the 5-prompt capture is stale once the full one is shown."""
    rel = get_relation(REL)
    small = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=5))
    run_stage(tmp_path, "heads", lm, rel, 0, HeadsConfig(max_prompts=5, n_boot=20))
    wide = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=9))
    con = connect(tmp_path)
    (reason,) = [r[0] for r in con.execute("SELECT reason FROM stale WHERE stage = 'heads'").fetchall()]
    assert small.result_id in reason and wide.result_id in reason
    assert con.execute("SELECT count(*) FROM head_prompts").fetchall()[0][0] == 0
    again = run_stage(tmp_path, "heads", lm, rel, 0, HeadsConfig(max_prompts=5, n_boot=20))
    assert again.status == "written"  # recomputed on the shown capture, which it reuses (no new capture)
    con = connect(tmp_path)
    assert con.execute("SELECT DISTINCT capture_id FROM head_prompts").fetchall() == [(wide.result_id,)]
    assert con.execute("SELECT count(*) FROM results WHERE stage = 'capture'").fetchall()[0][0] == 2


def test_a_corrupt_file_of_the_right_size_is_recomputed_not_reused(lm, tmp_path):
    rel = get_relation(REL)
    first = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    (path,) = [p for p in (tmp_path / "logits").rglob("*.parquet") if first.result_id in str(p)]
    data = bytearray(path.read_bytes())
    data[-5:] = b"XXXXX"
    path.write_bytes(bytes(data))
    again = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    assert again.status == "written" and again.result_id != first.result_id
    assert connect(tmp_path).execute("SELECT count(*), any_value(result_id) FROM logits").fetchall()[0] == \
        (4, again.result_id)


def test_a_capture_whose_selection_was_interrupted_is_reused_by_the_next_run(lm, tmp_path, monkeypatch):
    rel = get_relation(REL)

    class Crash(BaseException):
        pass

    def crash(self, recs, run_id):
        raise Crash()

    monkeypatch.setattr(Store, "select", crash)
    with pytest.raises(Crash):
        run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    monkeypatch.undo()
    again = run_stage(tmp_path, "capture", lm, rel, 0, CaptureConfig(max_prompts=4))
    assert again.status == "skipped"  # the committed result is reused and selected, not written twice
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM stored.logits").fetchall()[0][0] == 4
    assert con.execute("SELECT count(*) FROM logits").fetchall()[0][0] == 4


_CONCURRENT = """
import sys
sys.path.insert(0, {tests!r})
from factrecall.flows.runner import run_stage
from factrecall.tasks.heads_stage import HeadsConfig
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model
lm, seed = loaded_tiny_model("llama"), int(sys.argv[2])
for shot in (0, 1, 2):
    run_stage(sys.argv[1], "heads", lm, get_relation("paper.capital"), shot, HeadsConfig(max_prompts=5, n_boot=20, seed=seed))
"""


def test_two_concurrent_commands_leave_every_partition_consistent(tmp_path):
    """Two processes ask for other settings of the same partitions at once; each partition ends up showing
    one whole, current chain (capture and heads computed on it), whichever process selected last."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(_CONCURRENT.format(tests=str(Path(__file__).parent)))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "s"), seed], stderr=subprocess.PIPE)
             for seed in ("0", "1")]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    con = connect(tmp_path / "s")
    assert con.execute("SELECT count(*) FROM stale").fetchall()[0][0] == 0
    shown = con.execute("""SELECT h.shot, count(DISTINCT h.capture_id), any_value(h.capture_id) = any_value(l.result_id)
                           FROM head_prompts h JOIN logits l USING (model, relation, shot, prompt_id)
                           GROUP BY h.shot ORDER BY h.shot""").fetchall()
    assert shown == [(0, 1, True), (1, 1, True), (2, 1, True)]
    assert con.execute("SELECT count(*) FROM results").fetchall()[0][0] == 12  # both settings stay stored


def test_a_runs_code_digest_is_the_code_it_imported_not_the_files_now(tmp_path, monkeypatch):
    """A checkout updated under a long sweep must not change the digest the sweep records for the code it runs."""
    import subprocess
    import sys

    from factrecall.flows.runner import code_digest

    source = tmp_path / "stage_code_under_test.py"
    source.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = dataclasses.replace(STAGES["capture"], code=("stage_code_under_test",))
    before = code_digest(stage)
    source.write_text("X = 2  # edited while the run goes on\n")
    assert code_digest(stage) == before
    other = dataclasses.replace(STAGES["capture"], code=("stage_code_under_test", "factrecall.tasks.capture"))
    assert code_digest(other) != before  # the digest still depends on the modules
    # every process that runs stages (a command, a Dask worker) reads the digests when it imports the runner
    probe = ("import factrecall.flows.runner as r; from factrecall.stages import STAGES; "
             "print(r._source_digest.cache_info().currsize, len(STAGES))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    pinned, stages = map(int, out.stdout.split())
    assert pinned >= stages > 0
