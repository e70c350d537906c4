"""End-to-end Prefect runs (about 10 s of Prefect start-up per process): the stage flow writes, reuses
identical results, keeps results of other settings, and an interrupted run resumes without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factrecall.stages import STAGES
from factrecall.storage.query import connect
from factrecall.storage.store import Store
from tiny_models import save_tiny_model_dir

pytestmark = pytest.mark.flow
N = 100  # prompts per partition in the kill test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


def test_flow_writes_reuses_and_keeps_other_settings(model_dir, tmp_path):
    from factrecall.flows.stage_flow import stage_flow

    kwargs = dict(models=[model_dir], relations=["paper.capital", "lre.country_capital_city"], shots=[0, 1],
                  store_root=str(tmp_path), show_progress=False)
    first = stage_flow("capture", settings={"max_prompts": 10}, **kwargs)
    assert [p["status"] for p in first["partitions"]] == ["written"] * 4
    assert first["refused"] == {}
    second = stage_flow("capture", settings={"max_prompts": 10}, **kwargs)
    assert [p["status"] for p in second["partitions"]] == ["skipped"] * 4
    third = stage_flow("capture", settings={"max_prompts": 10, "seed": 1}, **kwargs)
    assert [p["status"] for p in third["partitions"]] == ["written"] * 4
    assert len(third["notes"]) == 4 and all("instead of" in n and "stays stored" in n for n in third["notes"])

    con = connect(tmp_path)
    rows = con.sql("SELECT relation, shot, count(*) FROM logits GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("lre.country_capital_city", 0, 10), ("lre.country_capital_city", 1, 10),
                    ("paper.capital", 0, 10), ("paper.capital", 1, 10)]
    seeds = con.sql("SELECT DISTINCT r.seed FROM logits l JOIN results r USING (result_id)").fetchall()
    assert seeds == [(1,)]  # the default views show the last settings asked for, never both
    assert con.sql("SELECT count(*) FROM stored.logits").fetchall()[0][0] == 80  # both settings stay stored
    runs = con.sql("SELECT run_id, seed FROM runs ORDER BY started_at").fetchall()
    assert [r[1] for r in runs] == [0, 0, 1]
    info = con.sql("SELECT DISTINCT family, n_layers, n_heads FROM model_info").fetchall()
    assert info == [("llama", 3, 4)]
    # As of the first run, the store shows the seed-0 results.
    old = connect(tmp_path, as_of=runs[0][0])
    assert old.sql("SELECT DISTINCT r.seed FROM logits l JOIN results r USING (result_id)").fetchall() == [(0,)]


def _committed(store: Path) -> int:
    results = Store(store).scan("_results")
    return 0 if results is None else results.num_rows


def test_killed_run_resumes_without_duplicates_or_partial_results(model_dir, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "FACTRECALL_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "factrecall.cli", "capture", "--models", model_dir, "--relations", "paper.capital",
           "--shots", "0,1,2", "--max-prompts", str(N), "--batch-size", "1", "--store", str(store),
           "--no-example", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    # Wait until the first partition is committed and the second one's first file is being written.
    while time.time() < deadline and not (_committed(store) >= 1 and len(list((store / "logits").rglob("*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = _committed(store)
    assert 1 <= committed < 3, "the run must be killed mid-way for this test to mean anything"
    files = list((store / "logits").rglob("*.parquet"))
    assert len(files) > committed, "the killed run should have left a partition half-written"
    con = connect(store)
    n, distinct = con.sql("SELECT count(*), count(DISTINCT (relation, shot, prompt_id, variant)) FROM logits").fetchall()[0]
    assert n == distinct == N * committed  # the half-written partition is invisible

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{3 - committed} partition(s) written, {committed} unchanged (skipped)" in done.stdout
    con = connect(store)
    for table in ("prompts", "logits", "resid_end"):
        n, distinct = con.sql(f"SELECT count(*), count(DISTINCT (relation, shot, prompt_id, variant)) FROM {table}").fetchall()[0]
        assert n == distinct == N * 3, table
    assert con.sql("SELECT count(*) FROM heads").fetchall()[0][0] == N * 3 * 3 * 4
    # gc deletes the killed run's orphan files; then every table has one file per result
    gc = subprocess.run([sys.executable, "-m", "factrecall.cli", "gc", "--store", str(store)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr
    for table in STAGES["capture"].schemas:
        files = list((store / table).rglob("*.parquet"))
        assert len(files) == 3, (table, files)
    assert connect(store).sql("SELECT count(*) FROM logits").fetchall()[0][0] == N * 3


def test_sigterm_to_the_process_group_ends_the_command_at_once_with_one_line(model_dir, tmp_path):
    """What Ctrl-C in a terminal, `timeout` and a service manager do: signal the whole process group. The command
    ends within seconds with one line and exit code 143, the partition being written leaves no file, and no
    process it started is left (Prefect's server runs in its own session, so the flow still reaches it: in the
    group it died first and the command spent 78 s retrying it, then failed with an unexpected ConnectError)."""
    import psutil

    store = tmp_path / "store"
    env = {**os.environ, "FACTRECALL_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "factrecall.cli", "capture", "--models", model_dir, "--relations", "paper.capital",
           "--shots", "0,1,2", "--max-prompts", str(N), "--batch-size", "1", "--store", str(store),
           "--no-example", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (_committed(store) >= 1 and len(list((store / "logits").rglob("*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "Prefect's server should be running"
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    seconds = time.monotonic() - started
    stderr = proc.stderr.read().decode().strip().splitlines()
    assert proc.returncode == 143 and seconds < 20, (proc.returncode, seconds, stderr[-3:])
    assert stderr[-1] == ("error: terminated (SIGTERM); rerun the command to resume (finished partitions are kept)")
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, alive
    committed = _committed(store)
    assert 1 <= committed < 3, "the command must be stopped mid-way for this test to mean anything"
    assert len(list((store / "logits").rglob("*.parquet"))) == committed  # the partition being written: no file
    con = connect(store)  # what the committed results were computed from is recorded although the run stopped
    assert con.sql("SELECT relation, domain FROM relations").fetchall() == [("paper.capital", "factual")]
    assert con.sql("SELECT family, n_layers FROM models").fetchall() == [("llama", 3)]
    from factrecall.version import code_version  # and the run: its code and settings, marked as not finished
    run = con.sql("SELECT code_version, finished_at, partitions, json_extract(config, '$.shots') FROM runs").fetchall()
    assert run == [(code_version(), None, None, "[0,1,2]")]


def test_final_layer_command_runs_the_flow_and_plots_each_model(model_dir, tmp_path):
    from typer.testing import CliRunner

    from factrecall.cli import app

    store = tmp_path / "store"
    args = ["final-layer", "--models", model_dir, "--relations", "paper.capital,lre.country_capital_city",
            "--shots", "0,1", "--max-prompts", "8", "--n-boot", "50", "--control-prompts", "2", "--store", str(store),
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 partition(s) written" in result.output and result.output.count("last layer ") == 4
    con = connect(store)
    assert con.sql("SELECT count(*) FROM final_layer_summary").fetchall()[0][0] == 4
    assert con.sql("SELECT count(*) FROM results WHERE status = 'current'").fetchall()[0][0] == 8  # with the captures
    out = tmp_path / "plots"
    exported = CliRunner().invoke(app, ["plots", "--store", str(store), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    model = con.sql("SELECT DISTINCT model FROM final_layer_summary").fetchall()[0][0]
    assert f"final_layer/{model}/lens_by_layer.png" in pngs  # the model's plot over its partitions
    assert len(pngs) == 4 * 3 + 1 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.rglob("*.png"))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "4 unchanged (skipped)" in again.output


def test_a_relation_file_is_stored_with_the_domain_it_is_given(model_dir, tmp_path):
    import json

    from factrecall.flows.stage_flow import stage_flow

    path = tmp_path / "capitals.jsonl"
    path.write_text("".join(json.dumps({"subject": s, "object": o, "template": "The capital of {} is"}) + "\n"
                            for s, o in (("France", "Paris"), ("Peru", "Lima"), ("Chile", "Santiago"))))
    done = stage_flow("capture", [model_dir], [str(path)], [0], str(tmp_path / "s"), show_progress=False,
                      domains={str(path): "geography"})
    name = done["partitions"][0]["relation"]
    con = connect(tmp_path / "s")
    assert con.execute("SELECT DISTINCT relation, domain FROM logits").fetchall() == [(name, "geography")]
    assert con.execute("SELECT source, domain, n_facts FROM relations").fetchall() == [("user", "geography", 3)]
