"""End-to-end Prefect runs (about 10 s of Prefect start-up per process): the sweep flow writes,
skips unchanged partitions, and an interrupted run resumes without duplicates or partial files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factrecall.storage.query import connect
from factrecall.storage.schema import TABLES
from tiny_models import save_tiny_model_dir

pytestmark = pytest.mark.flow
N = 100  # prompts per partition in the kill test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


def test_sweep_writes_skips_and_rewrites_on_new_inputs(model_dir, tmp_path):
    from factrecall.flows.sweep import sweep

    kwargs = dict(models=[model_dir], relations=["paper.capital", "lre.country_capital_city"], shots=[0, 1],
                  store_root=str(tmp_path), max_prompts=10, show_progress=False)
    first = sweep(**kwargs)
    assert [p["status"] for p in first["partitions"]] == ["written"] * 4
    assert first["refused"] == {}
    second = sweep(**kwargs)
    assert [p["status"] for p in second["partitions"]] == ["skipped"] * 4
    third = sweep(**{**kwargs, "seed": 1})
    assert [p["status"] for p in third["partitions"]] == ["written"] * 4

    con = connect(tmp_path)
    rows = con.sql("SELECT relation, shot, count(*) FROM logits GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("lre.country_capital_city", 0, 10), ("lre.country_capital_city", 1, 10),
                    ("paper.capital", 0, 10), ("paper.capital", 1, 10)]
    runs = con.sql("SELECT run_id, seed, refused FROM runs ORDER BY started_at").fetchall()
    assert len(runs) == 3 and [r[1] for r in runs] == [0, 0, 1]
    info = con.sql("SELECT family, n_layers, n_heads FROM model_info").fetchall()
    assert info == [("llama", 3, 4)]


def _count(root: Path, table: str) -> tuple[int, int]:
    con = connect(root)
    return con.sql(
        f"SELECT count(*), count(DISTINCT (relation, shot, prompt_id, variant)) FROM {table}").fetchall()[0]


def test_killed_run_resumes_without_duplicates_or_partial_files(model_dir, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "FACTRECALL_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "factrecall.cli", "run", "--models", model_dir, "--relations", "paper.capital",
           "--shots", "0,1,2", "--max-prompts", str(N), "--batch-size", "1", "--store", str(store),
           "--no-example", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    commits = store / "_commits"
    deadline = time.time() + 240
    while time.time() < deadline and not list(commits.glob("*/*/*/capture.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.5)  # inside the second partition (N single-prompt forwards)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = list(commits.glob("*/*/*/capture.json"))
    assert 1 <= len(committed) < 3, "the run must be killed mid-way for this test to mean anything"
    staged = [p for p in (store / "_staging").rglob("*.parquet")]
    assert staged, "the killed run should have left a partition half-written in staging"
    n, distinct = _count(store, "logits")
    assert n == distinct == N * len(committed)  # the half-written partition is invisible

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "1 unchanged (skipped)" in done.stdout and "2 partition(s) written" in done.stdout
    assert not list((store / "_staging").rglob("*.parquet"))
    for table in ("prompts", "logits", "resid_end"):
        assert _count(store, table) == (N * 3, N * 3)
    con = connect(store)
    assert con.sql("SELECT count(*) FROM heads").fetchall()[0][0] == N * 3 * 3 * 4
    assert len(list(commits.glob("*/*/*/capture.json"))) == 3
    for table in TABLES:  # exactly one file per partition and table, none left over
        files = list((store / table).rglob("*.parquet"))
        assert len(files) == 3, (table, files)


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
    plots = json.loads(con.sql("SELECT plots FROM runs").fetchall()[0][0])
    assert list(plots) == ["tiny-llama"]
    assert (store / plots["tiny-llama"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "4 unchanged (skipped)" in again.output
