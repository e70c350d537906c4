"""Published claims (``storage.published``): claims written out of stores with their provenance and read back
without them, so that a table over models run on different machines is the same table as from one store."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import polars as pl
import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.storage.published import PublishedError, open_published, publish
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


def _claims(view_or_root, published=None) -> pl.DataFrame:
    sql = "SELECT model, relation, shot, claim, value, verdict, result_id FROM claims"
    out = _frame(run_query(view_or_root, sql, fmt="json", published=published))
    return out.sort(["model", "relation", "shot", "claim"])


def test_publishing_in_parts_adds_only_what_the_folder_lacks(tmp_path):
    """A sweep run in parts into one store (or several): each `publish` writes the claims the folder lacks, so the
    folder always reads as the store's claims, none twice."""
    folder = tmp_path / "results" / "spec"
    store = _store(tmp_path / "a", ["small"])
    first = publish(store.root, folder)
    assert (first.claims, first.partitions, first.already) == (4, 2, 0)
    assert first.path.parent == folder and first.path.name.startswith("claims-") and first.path.suffix == ".csv"
    again = publish(store.root, folder)  # nothing new: nothing written
    assert again.path is None and again.already == 4 and sorted(folder.iterdir()) == [first.path]
    _store(tmp_path / "a", ["big"])  # the next part, in the same store
    second = publish(store.root, folder)
    assert (second.claims, second.partitions, second.already) == (4, 2, 4) and second.path != first.path
    assert pl.read_csv(second.path)["model"].unique().to_list() == ["big"]  # only what the folder lacked
    assert _claims(None, published=folder).equals(_claims(store.root))  # the folder reads as the store
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.path.name, second.path.name])  # no temp file


def test_publish_refuses_a_different_result_or_an_unreadable_file_and_writes_nothing(tmp_path):
    folder = tmp_path / "p"
    publish(_store(tmp_path / "a", ["small"]).root, folder, "first.csv")
    rerun = _store(tmp_path / "b", ["small", "big"], seed=1, shift=0.01)  # other results for small's claims
    with pytest.raises(PublishedError) as err:
        publish(rerun.root, folder)
    line = str(err.value)
    assert "4 claim(s) of the store have a different result" in line and "first.csv" in line and "\n" not in line
    assert [p.name for p in folder.iterdir()] == ["first.csv"]  # not even big's claims, which had no conflict
    (folder / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PublishedError, match="bad.parquet: cannot be read.*nothing published"):
        publish(_store(tmp_path / "c", ["big"]).root, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["bad.parquet", "first.csv"]
    (folder / "bad.parquet").unlink()
    with pytest.raises(PublishedError, match="first.csv exists"):  # a published file is never replaced
        publish(_store(tmp_path / "d", ["big"]).root, folder, "first.csv")


def test_the_cli_publishes_in_one_line_and_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTRECALL_HOME", str(tmp_path / "home"))
    folder = tmp_path / "p"
    cli = CliRunner()
    store = _store(tmp_path / "a", ["small"])
    ok = cli.invoke(app, ["publish", "--store", str(store.root), "--to", str(folder), "--name", "part1.csv"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == f"published 4 claim(s) of 2 partition(s) to {folder / 'part1.csv'} (0 already in {folder})"
    same = cli.invoke(app, ["publish", "--store", str(store.root), "--to", str(folder)])
    assert same.exit_code == 0 and same.output.startswith("nothing to publish: the 4 current claim(s)")
    other = _store(tmp_path / "b", ["small"], seed=1, shift=0.01)
    refused = cli.invoke(app, ["publish", "--store", str(other.root), "--to", str(folder)])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert refused.output.startswith("error:") and "different result" in refused.output


def test_publish_writes_parquet_too_and_leaves_nothing_behind_when_a_write_fails(tmp_path, monkeypatch):
    store = _store(tmp_path / "a", ["small", "big"])
    for bad in ("sub/x.csv", "../x.csv", "x.txt"):
        with pytest.raises(PublishedError, match="give a file name"):
            publish(store.root, tmp_path / "new" / "folder", bad)
    assert not (tmp_path / "new").exists() and not (tmp_path / "x.csv").exists()  # refused before any write

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    folder = tmp_path / "p"
    with monkeypatch.context() as m:
        m.setattr("factrecall.storage.published.os.link", full_disk)
        with pytest.raises(PublishedError, match="cannot be written .No space left on device.; nothing published"):
            publish(store.root, folder, "c.csv")
    assert list(folder.iterdir()) == []  # no file, no temporary file
    done = publish(store.root, folder, "c.parquet")
    assert done.claims == 8 and _claims(None, published=folder).equals(_claims(store.root))
