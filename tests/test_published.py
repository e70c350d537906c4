"""Published claims (``storage.published``): claims written out of stores with their provenance and read back
without them, so that a table over models run on different machines is the same table as from one store."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import polars as pl
import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.storage.published import PublishedError, open_published
from factrecall.storage.query import QueryError, connect, named_query, run_query
from factrecall.storage.store import Store
from synthetic_store import put, table

SIZES = {"small": 135_000_000, "mid": 500_000_000, "big": 1_500_000_000}
#: (model, relation) -> claim -> (value, verdict)
VALUES = {
    ("small", "r1"): {"task_push": (0.4, "holds"), "final_layer_suppresses": (-0.2, "does not")},
    ("small", "r2"): {"task_push": (1.1, "holds"), "final_layer_suppresses": (0.5, "holds")},
    ("mid", "r1"): {"task_push": (0.7, "holds"), "final_layer_suppresses": (0.0, "not tested")},
    ("big", "r1"): {"task_push": (2.0, "holds"), "final_layer_suppresses": (0.9, "holds")},
    ("big", "r2"): {"task_push": (-0.3, "does not"), "final_layer_suppresses": (0.1, "inconclusive")},
}


def _rows(values: dict[str, tuple[float, str]]) -> dict:
    names = list(values)
    return {"claim": names, "step": [3 if c == "task_push" else 4 for c in names], "statistic": ["mean"] * len(names),
            "value": [values[c][0] for c in names], "lo": [values[c][0] - 0.25 for c in names],
            "hi": [values[c][0] + 0.25 for c in names], "n": [20] * len(names), "threshold": [0.0] * len(names),
            "verdict": [values[c][1] for c in names], "note": ["a, b"] * len(names), "rule": ["r"] * len(names),
            "source_stage": ["final_layer"] * len(names), "source_result_id": ["x"] * len(names)}


def _store(path, models, seed: int = 0, shift: float = 0.0) -> Store:
    """A store with the claims of ``models`` (values shifted by ``shift``) and their models records."""
    store = Store(path)
    for (model, rel), values in VALUES.items():
        if model in models:
            shifted = {c: (v + shift, verdict) for c, (v, verdict) in values.items()}
            put(store, "claims", (model, rel, 0), {"claims": table("claims", _rows(shifted))}, seed=seed)
    with store.writing():
        store.append_records("models", [
            {"run_id": "t", "model": m, "ref": m, "family": f"fam-{m}", "n_params": SIZES[m] + 1,
             "n_params_nominal": SIZES[m], "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_model": 8,
             "vocab_size": 10, "dtype": "float32", "file_sha256": f"sha-{m}", "recorded_at": datetime.now(timezone.utc)}
            for m in models])
    return store


def _publish(store: Store, out) -> None:
    run_query(store.root, named_query("published_claims"), fmt="csv", out=out)


def _frame(text: str) -> pl.DataFrame:
    return pl.DataFrame(json.loads(text))


def test_claims_published_from_two_stores_give_the_table_of_one_store(tmp_path):
    folder = tmp_path / "published"
    _publish(_store(tmp_path / "a", ["small", "mid"]), folder / "claims-a.csv")  # one machine
    _publish(_store(tmp_path / "b", ["big"]), folder / "claims-b.csv")  # another
    both = _store(tmp_path / "both", ["small", "mid", "big"])
    for query in ("claims_by_size", "claim_matrix", "claims_by_domain"):
        from_store = _frame(run_query(both.root, named_query(query), fmt="json"))
        published = _frame(run_query(None, named_query(query), fmt="json", published=folder))
        columns = [c for c in from_store.columns if "result_id" not in c]  # ids differ between stores
        assert published.select(columns).equals(from_store.select(columns)), query
    pooled = _frame(run_query(None, named_query("claims_by_size"), fmt="json", published=folder)).filter(
        pl.col("relation") == "all")
    assert pooled.filter(pl.col("claim") == "task_push")["model"].to_list() == ["small", "mid", "big"]  # by size
    assert pooled.filter(pl.col("claim") == "task_push")["params"].to_list() == list(SIZES.values())


def test_published_rows_say_which_result_and_inputs_produced_them(tmp_path):
    store = _store(tmp_path / "a", ["small"])
    _publish(store, tmp_path / "p" / "c.csv")
    with open_published(tmp_path / "p") as view:
        rows = view.pl("SELECT * FROM published ORDER BY relation, claim")
    stored = connect(store.root).sql("SELECT result_id, input_hash, run_id FROM results WHERE stage = 'claims' "
                                     "ORDER BY relation").pl()
    assert rows.height == 4 and set(rows["result_id"]) == set(stored["result_id"])
    assert set(rows["input_hash"]) == set(stored["input_hash"]) and set(rows["run_id"]) == {"synthetic"}
    assert set(rows["model_sha256"].drop_nulls()) <= {"sha-small"} and rows["family"].unique().to_list() == ["fam-small"]
    assert rows.filter(pl.col("claim") == "task_push")["note"].to_list() == ["a, b", "a, b"]  # a comma survives CSV


def test_the_same_result_published_twice_is_read_once_and_different_results_are_refused(tmp_path):
    folder = tmp_path / "p"
    store = _store(tmp_path / "a", ["small"])
    _publish(store, folder / "one.csv")
    _publish(store, folder / "copy.csv")
    with open_published(folder) as view:
        assert view.sql("SELECT count(*) FROM claims").fetchall() == [(4,)]
    _publish(_store(tmp_path / "again", ["small"], seed=1, shift=0.01), folder / "rerun.csv")  # another result
    with pytest.raises(PublishedError) as err:
        open_published(folder)
    line = str(err.value)
    assert "published twice with different results" in line and "rerun.csv" in line and "\n" not in line


def test_a_damaged_file_is_named_and_the_others_are_read(tmp_path):
    folder = tmp_path / "p"
    _publish(_store(tmp_path / "a", ["small"]), folder / "good.csv")
    (folder / "bad.parquet").write_bytes(b"PAR1 not really")
    pl.DataFrame({"model": ["x"], "claim": ["y"]}).write_csv(folder / "short.csv")
    warnings = []
    text = run_query(None, "SELECT DISTINCT model FROM claims", fmt="csv", published=folder, warn=warnings.append)
    assert text.split() == ["model", "small"]
    assert any("bad.parquet" in w and "cannot be read" in w for w in warnings)
    assert any("short.csv" in w and "lacks column(s) family" in w for w in warnings)
    with pytest.raises(PublishedError, match="no readable published claims"):
        open_published(tmp_path / "a")  # a store folder has no published files


def test_queries_over_published_claims_read_and_nothing_else(tmp_path):
    folder = tmp_path / "p"
    _publish(_store(tmp_path / "a", ["small"]), folder / "c.csv")
    with pytest.raises(QueryError, match="not allowed"):
        run_query(None, f"COPY claims TO '{tmp_path / 'x.csv'}'", published=folder)
    with pytest.raises(QueryError, match="not allowed"):
        run_query(None, f"SELECT * FROM read_csv('{folder / 'c.csv'}')", published=folder)
    with pytest.raises(QueryError, match="views claims, models, published only"):
        run_query(None, "SELECT * FROM lens", published=folder)
    assert not (tmp_path / "x.csv").exists()


def test_the_cli_queries_and_plots_published_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTRECALL_HOME", str(tmp_path / "home"))
    folder = tmp_path / "p"
    _publish(_store(tmp_path / "a", ["small"]), folder / "a.csv")
    _publish(_store(tmp_path / "b", ["big"]), folder / "b.csv")
    cli = CliRunner()
    ok = cli.invoke(app, ["query", "--published", str(folder), "--named", "claims_by_size", "--format", "csv"])
    assert ok.exit_code == 0, ok.output
    assert pl.read_csv(ok.stdout.encode())["model"].unique().sort().to_list() == ["big", "small"]
    both = cli.invoke(app, ["query", "--published", str(folder), "--store", str(tmp_path / "a"), "SELECT 1"])
    assert both.exit_code == 2 and "drop --store" in both.output
    missing = cli.invoke(app, ["query", "--published", str(tmp_path / "nowhere"), "SELECT 1"])
    assert missing.exit_code == 2 and "no such folder of published claims" in missing.output
    plots = cli.invoke(app, ["plots", "--published", str(folder), "--out", str(tmp_path / "png")])
    assert plots.exit_code == 0, plots.output
    assert (tmp_path / "png" / "claims" / "size_axis.png").read_bytes()[:4] == b"\x89PNG"
