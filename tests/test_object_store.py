"""The store on object storage: a local S3 server (moto, on 127.0.0.1, started and stopped here) holds a store
that `reproduce`, `query`, `--as-of`, two concurrent writers and the integrity check use like a local folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.storage.location import ObjectPath, store_location
from factrecall.storage.query import connect, open_store
from tiny_models import save_tiny_model_dir, tiny_spec

runner = CliRunner()
BUCKET = "factrecall-test"
_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with an empty bucket; the AWS_* variables point at it for the module's tests."""
    import boto3

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL")}
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start (is moto[server] installed? `make setup`)")
                time.sleep(0.1)
        os.environ.update(_ENV, AWS_ENDPOINT_URL=endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _claims(root) -> pl.DataFrame:
    return connect(root).sql("SELECT relation, shot, claim, value, verdict FROM claims ORDER BY ALL").pl()


@pytest.mark.flow
def test_a_reproduction_on_s3_equals_the_local_one_and_reads_as_of_a_run(s3, tmp_path):
    model = save_tiny_model_dir("llama", tmp_path / "tiny-llama")
    spec = tiny_spec(tmp_path / "tiny.toml", model)
    url, local = f"s3://{BUCKET}/runs/store", tmp_path / "local"
    for store in (url, str(local)):
        result = runner.invoke(app, ["reproduce", spec, "--store", store, "--no-progress", "--no-report"])
        assert result.exit_code == 0, result.output
    on_s3, on_disk = _claims(url), _claims(local)
    assert on_s3.height == on_disk.height > 0
    assert on_s3.select("relation", "shot", "claim", "verdict").equals(on_disk.select("relation", "shot", "claim", "verdict"))
    assert on_s3["value"].to_list() == pytest.approx(on_disk["value"].to_list(), abs=1e-6, nan_ok=True)
    assert not Path(url).exists() and not (Path.cwd() / "s3:").exists()  # nothing landed in a local folder

    named = runner.invoke(app, ["query", "--named", "claims_by_domain", "--store", url, "--format", "csv"])
    assert named.exit_code == 0, named.output
    assert named.output.count("\n") >= 2  # a header and rows, read by DuckDB from S3

    (first,) = [r[0] for r in connect(url).execute("SELECT run_id FROM runs").fetchall()]
    more = runner.invoke(app, ["capture", "--models", str(model), "--relations", "lre.country_language",
                               "--shots", "0", "--max-prompts", "6", "--store", url, "--no-progress"])
    assert more.exit_code == 0, more.output
    count = "SELECT count(*) AS n FROM results"
    now = runner.invoke(app, ["query", count, "--store", url, "--format", "csv"])
    then = runner.invoke(app, ["query", count, "--store", url, "--format", "csv", "--as-of", first])
    assert now.exit_code == 0 and then.exit_code == 0, now.output + then.output
    assert int(now.output.split()[-1]) == int(then.output.split()[-1]) + 1  # one capture more since that run

    report = runner.invoke(app, ["report", "--store", url, "--spec", "tiny", "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert f"{url}" in (tmp_path / "r.html").read_text() and (tmp_path / "r.md").is_file()  # provenance names the URL
    listed = runner.invoke(app, ["runs", "--store", url])
    assert listed.exit_code == 0 and first in listed.output, listed.output

    gc = runner.invoke(app, ["gc", "--store", url])
    assert gc.exit_code == 2 and "local stores only" in gc.output and len(gc.output.strip().splitlines()) == 1


_WRITER = """
import sys, time
from factrecall.storage.store import Store
from synthetic_store import put, table
store = Store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # both writers start together, after their imports
for i in range(int(sys.argv[3])):
    put(store, "claims", ("m", f"{sys.argv[2]}{i}", 0), {"claims": table("claims", {
        "claim": ["task_push"], "step": [3], "statistic": ["mean"], "value": [float(i)], "lo": [0.0], "hi": [1.0],
        "n": [10], "threshold": [0.0], "verdict": ["holds"], "note": [None], "rule": ["r"],
        "source_stage": ["mlp"], "source_result_id": ["x"]})}, run_id=sys.argv[2])
"""


def test_two_concurrent_writers_commit_every_result_and_a_lost_object_is_named(s3, tmp_path):
    url, n = f"s3://{BUCKET}/concurrent/store", 6
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    start = time.time() + 15
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, url, name, str(n), str(start)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    outputs = [w.communicate(timeout=300)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    con = connect(url)
    got = con.execute("SELECT relation, value FROM claims ORDER BY relation").fetchall()
    assert got == [(f"{w}{i}", float(i)) for w in ("a", "b") for i in range(n)]  # every result of both, once
    assert con.execute("SELECT count(*) FROM results").fetchall()[0][0] == 2 * n
    spans = dict(con.execute("SELECT run_id, [min(committed_at), max(committed_at)] FROM results GROUP BY run_id").fetchall())
    assert max(spans["a"][0], spans["b"][0]) < min(spans["a"][1], spans["b"][1])  # their commits interleaved

    root = store_location(url)
    assert isinstance(root, ObjectPath)
    victim = next(p for p in (root / "claims").iterdir() if p.name.startswith("model="))
    files = [f for f in root.fs.get_file_info(pafs.FileSelector(victim.key, recursive=True))
             if f.path.endswith(".parquet")]
    root.fs.delete_file(files[0].path)
    view = open_store(url)
    try:
        warnings = " ".join(view.warnings())
        assert f"s3://{files[0].path}" in warnings and "missing" in warnings
        assert view.sql("SELECT count(*) FROM claims").fetchall()[0][0] == 2 * n - 1  # the rest still reads
    finally:
        view.close()


def test_bad_store_urls_are_one_line_errors_and_write_nothing(s3, tmp_path, monkeypatch):
    model = save_tiny_model_dir("llama", tmp_path / "tiny-llama")
    args = ["capture", "--models", str(model), "--relations", "paper.capital", "--shots", "0", "--max-prompts", "4",
            "--no-progress", "--store"]
    for store, message in ((f"s3://no-such-bucket-{os.getpid()}/store", "is not writable"),
                           ("ftp://host/store", "ftp:// is not a supported store URL")):
        result = runner.invoke(app, [*args, store])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # a server that does not answer
    for command in ([*args, f"s3://{BUCKET}/store"], ["query", "SELECT 1", "--store", f"s3://{BUCKET}/store"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "cannot reach the store" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
