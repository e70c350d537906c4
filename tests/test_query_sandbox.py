"""`factrecall query` reads the store's views and nothing else: every way out of the sandbox is refused
with one line naming what is not allowed, and the store's files are unchanged."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.storage.query import QueryError, run_query
from factrecall.storage.store import Store
from test_store import KEY, capture

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    capture(Store(root), KEY, 4)
    return root


def _fingerprint(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "_gc.lock"}


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1 AS x) TO '{data}' (FORMAT parquet)",
    "COPY (SELECT 1 AS x) TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other.db' AS other",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{data}')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
])
def test_statements_that_reach_outside_the_store_are_refused(store, tmp_path, sql):
    (data,) = list((store / "logits").rglob("*.parquet"))
    before = _fingerprint(store)
    text = sql.format(data=data, tmp=tmp_path)
    with pytest.raises(QueryError, match="^not allowed: queries read the store's views and nothing else"):
        run_query(store, text)
    result = runner.invoke(app, ["query", "--store", str(store), text])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: not allowed") and "Traceback" not in result.output
    assert _fingerprint(store) == before
    assert not any(tmp_path.iterdir())


def test_reading_the_views_still_works(store):
    assert "4" in run_query(store, "SELECT count(*) AS n FROM logits", fmt="csv")
