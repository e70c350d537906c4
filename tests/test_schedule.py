"""`factrecall server` and `factrecall schedule` against a real local Prefect server on 127.0.0.1: the
deployment carries the cron, a run triggered through Prefect lands its claims in the store, and nothing
outlives the test (both commands stop on SIGTERM, the server with every process it started)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from factrecall.storage.query import connect
from tiny_models import save_tiny_model_dir

pytestmark = pytest.mark.flow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str, proc=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGTERM the command; returns the processes it had started that are still alive after it exits."""
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(family, timeout=20)
    return alive


CRON = "0 3 29 2 *"


def test_schedule_serves_a_cron_deployment_whose_run_lands_in_the_store(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "FACTRECALL_HOME": str(tmp_path / "home"), "PREFECT_API_URL": api,
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    model_dir = save_tiny_model_dir("gpt2", tmp_path / "tiny-gpt2")
    spec = tmp_path / "tiny.toml"
    spec.write_text(f'name = "tiny-scheduled"\nmodels = ["{model_dir}"]\nshots = [0]\n'
                    '[settings]\nmax_prompts = 8\nn_boot = 20\n[[relations]]\nname = "paper.capital"\n')
    store = tmp_path / "store"
    logs = tmp_path / "server.log", tmp_path / "schedule.log"
    server = subprocess.Popen([BIN / "factrecall", "server", "--port", str(port)], env=env,
                              stdout=logs[0].open("w"), stderr=subprocess.STDOUT)
    serve, left_serving = None, []
    try:
        _wait(lambda: _healthy(api), 120, "the Prefect server", server)
        # a cron that does not fire while the test runs (daily at 03:00 did, for a run started at 02:55 UTC: two
        # reproductions landed, the scheduled one and the triggered one): 03:00 on 29 February only
        serve = subprocess.Popen([BIN / "factrecall", "schedule", str(spec), "--cron", CRON, "--store", str(store),
                                  "--runner", "dask", "--workers", "1"],
                                 env=env, stdout=logs[1].open("w"), stderr=subprocess.STDOUT)
        _wait(lambda: "being served" in logs[1].read_text(), 120, "the deployment", serve)
        name = "factrecall-reproduce/reproduce-tiny-scheduled"
        inspect = subprocess.run([BIN / "prefect", "deployment", "inspect", name], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stdout + inspect.stderr
        assert f"'cron': '{CRON}'" in inspect.stdout
        assert "'cluster': {" in inspect.stdout and "'workers': 1" in inspect.stdout  # each run on a Dask worker
        triggered = subprocess.run([BIN / "prefect", "deployment", "run", name], env=env, capture_output=True,
                                   text=True, timeout=60)
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr

        def landed() -> bool:
            try:
                return connect(store).execute("SELECT count(*) FROM reproductions").fetchall()[0][0] > 0
            except Exception:  # noqa: BLE001 - no store yet
                return False

        _wait(landed, 240, "the triggered run's reproduction", serve)
        con = connect(store)
        assert con.execute("SELECT spec, verdict FROM reproductions").fetchall() == [("tiny-scheduled", "first")]
        assert con.execute("SELECT count(*) FROM claims").fetchall()[0][0] == 8
        (config,) = con.execute("SELECT config FROM runs WHERE kind = 'reproduce'").fetchall()[0]
        assert json.loads(config)["cluster"]["workers"] == 1  # the scheduled run went through the Dask runner
        runs = subprocess.run([BIN / "prefect", "flow-run", "ls", "--state", "COMPLETED"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert "reproduce" in runs.stdout, runs.stdout + runs.stderr
        left_serving = _stop(serve)  # SIGTERM: serving stops and the schedule is paused on the server
        paused = subprocess.run([BIN / "prefect", "deployment", "inspect", name], env=env, capture_output=True,
                                text=True, timeout=60)
        assert "'paused': True" in paused.stdout, paused.stdout
    finally:
        left = []
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                left += _stop(proc)
    assert serve.returncode is not None and server.returncode is not None
    left += left_serving
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
