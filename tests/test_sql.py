"""SQL views and named queries over a synthetic store, checked against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factrecall.storage.columns import vectors
from factrecall.storage.query import (
    QueryError,
    connect,
    list_named_queries,
    named_query,
    run_query,
    view_names,
)
from factrecall.storage.schema import SCHEMAS
from factrecall.storage.store import Store
from synthetic_store import put, table

# model -> (d_model, norm_kind, n_layers, n_heads)
MODELS = {"lnmodel": (8, "layernorm", 3, 4), "rms-model.v2": (6, "rmsnorm", 4, 3)}
RELATIONS = ("capital", "language")
SHOTS = (0, 2)
N_CLEAN = 5  # clean prompts per partition; as many "corrupt_subject" ones
VOCAB = 50


def _vec(rows: np.ndarray) -> pa.Array:
    rows = np.asarray(rows, np.float32)
    return vectors(rows, rows.shape[1])


def build_store(root: Path, seed: int = 0) -> dict:
    """Write the synthetic store; return the numpy truth keyed by (model, relation, shot)."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    truth: dict = {"models": {}, "parts": {}}
    for model, (d, norm, n_layers, n_heads) in MODELS.items():
        gain = rng.normal(1.0, 0.3, d).astype(np.float32)
        bias = (rng.normal(0, 0.1, d) if norm == "layernorm" else np.zeros(d)).astype(np.float32)
        truth["models"][model] = dict(d=d, norm=norm, gain=gain, bias=bias, n_layers=n_layers, n_heads=n_heads)
        info = table("model_info", dict(
            family=["synthetic"], n_layers=[n_layers], n_heads=[n_heads], d_model=[d],
            d_head=[2], norm_kind=[norm], final_norm_gain=_vec(gain[None]), final_norm_bias=_vec(bias[None]),
            vocab_size=[VOCAB], dtype=["float32"], source=["test"], file_sha256=["0" * 64], bos=[False],
            logit_softcap=[None],
        ))
        for relation in RELATIONS:
            for shot in SHOTS:
                key = (model, relation, shot)
                n = 2 * N_CLEAN
                pid = np.arange(n, dtype=np.int32) + 100 * shot
                variant = ["clean"] * N_CLEAN + ["corrupt_subject"] * N_CLEAN
                tokens = rng.choice(VOCAB, size=6, replace=False).astype(np.int32)
                answer = rng.choice(tokens[:4], size=n).astype(np.int32)
                w_u = rng.normal(0, 1, (len(tokens), d)).astype(np.float32)
                sigma = rng.uniform(0.5, 3.0, n).astype(np.float32)
                p_ans = rng.uniform(0, 1, n).astype(np.float32)
                top1 = rng.uniform(0, 1, n) < 0.5
                metric = rng.normal(2, 1, n).astype(np.float32)
                heads = rng.normal(0, 1, (n, n_layers, n_heads, d)).astype(np.float32)
                attn_s = rng.uniform(0, 1, (n, n_layers, n_heads)).astype(np.float32)
                err = np.abs(rng.normal(0, 1e-4, (n, 2))).astype(np.float32)
                mlogit = rng.normal(0, 5, (n, 2)).astype(np.float32)
                embed = rng.normal(0, 1, (n, d)).astype(np.float32)
                truth["parts"][key] = dict(
                    pid=pid, variant=variant, tokens=tokens, answer=answer, w_u=w_u, sigma=sigma,
                    p_ans=p_ans, top1=top1, metric=metric, heads=heads, attn_s=attn_s, err=err,
                    mlogit=mlogit, embed=embed,
                )
                roles = np.array(["answer", "top1"])
                put(store, "capture", key, n_prompts=N_CLEAN, run_id="run1", tables={
                    "model_info": info,
                    "prompts": table("prompts", dict(
                        prompt_id=pid, variant=variant, fact_index=np.arange(n) % N_CLEAN,
                        template_index=np.zeros(n), subject=[f"s{i}" for i in range(n)],
                        object=[f"o{i}" for i in range(n)], query_subject=[f"s{i}" for i in range(n)],
                        text=[f"prompt {i}" for i in range(n)], demo_subjects=[["x"] * shot] * n,
                        source_prompt_id=[None] * N_CLEAN + list(pid[:N_CLEAN]), n_tokens=np.full(n, 7),
                        end_pos=np.full(n, 6), s_pos=np.full(n, 3), s_first_pos=np.full(n, 2),
                        subject_token_id=np.full(n, tokens[4]), answer_token_id=answer,
                        answer_token=[f"t{a}" for a in answer], object_n_tokens=np.ones(n), bos=[False] * n,
                    )),
                    "logits": table("logits", dict(
                        prompt_id=pid, variant=variant, answer_logit=mlogit[:, 0], p_answer=p_ans,
                        answer_rank=np.where(top1, 0, 3), metric_m=metric, top1=top1,
                        topk_ids=[[1, 2]] * n, topk_logits=[[1.0, 0.5]] * n, final_norm_scale=sigma,
                        ledger_error=err.max(1),
                    )),
                    "heads": [table("heads", dict(  # one row group per layer
                        prompt_id=pid[np.repeat(np.arange(n), n_heads)],
                        variant=[variant[i] for i in np.repeat(np.arange(n), n_heads)],
                        layer=np.full(n * n_heads, layer), head=np.tile(np.arange(n_heads), n),
                        output=_vec(heads[:, layer].reshape(-1, d)),
                        attn_to_s=attn_s[:, layer].reshape(-1), attn=[[0.5, 0.5]] * (n * n_heads),
                    )) for layer in range(n_layers)],
                    "resid_end": table("resid_end", dict(
                        prompt_id=pid, variant=variant, embed=_vec(embed),
                        pos_embed=_vec(embed) if norm == "layernorm" else pa.nulls(n, SCHEMAS["resid_end"].field("pos_embed").type),
                        final_resid=_vec(embed * 2),
                    )),
                    "ledger": table("ledger", dict(
                        prompt_id=np.repeat(pid, 2), variant=np.repeat(variant, 2),
                        token_role=np.tile(roles, n), token_id=np.repeat(answer, 2),
                        model_logit=mlogit.reshape(-1), dla_sum=(mlogit + err).reshape(-1),
                        error=err.reshape(-1),
                    )),
                    "unembed": table("unembed", dict(
                        token_id=tokens, token=[f"t{t}" for t in tokens], w_u=_vec(w_u),
                        b_u=np.zeros(len(tokens)),
                    )),
                })
    with store.writing():
        store.write_run({"run_id": "run1", "started_at": "2024-01-01T00:00:00+00:00",
                         "finished_at": "2024-01-01T00:01:00+00:00", "seed": 0,
                         "config": {"models": list(MODELS)}, "packages": {"duckdb": duckdb.__version__}})
    return truth


def expected_dla(truth: dict) -> dict:
    """numpy DLA of every head onto its prompt's answer: key -> value (float64)."""
    out = {}
    for (model, relation, shot), t in truth["parts"].items():
        m = truth["models"][model]
        g = m["gain"].astype(np.float64)
        for i, pid in enumerate(t["pid"]):
            u = t["w_u"][list(t["tokens"]).index(t["answer"][i])].astype(np.float64)
            for layer in range(m["n_layers"]):
                for head in range(m["n_heads"]):
                    c = t["heads"][i, layer, head].astype(np.float64)
                    if m["norm"] == "layernorm":
                        c = c - c.mean()
                    out[(model, relation, shot, t["variant"][i], int(pid), layer, head)] = (
                        np.sum(g * c * u) / np.float64(t["sigma"][i])
                    )
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    truth = build_store(root)
    return root, truth


def test_round_trip_delta_duckdb_polars(synth):
    root, truth = synth
    # Polars reads the Delta table itself (partition columns from the log).
    df = pl.scan_delta(str(root / "heads")).filter(
        (pl.col("model") == "lnmodel") & (pl.col("relation") == "capital") & (pl.col("shot") == 2)).collect()
    assert df.schema["output"] == pl.List(pl.Float32)
    t = truth["parts"][("lnmodel", "capital", 2)]
    got = np.stack(df.sort(["layer", "prompt_id", "head"])["output"].to_numpy())
    want = t["heads"].transpose(1, 0, 2, 3).reshape(-1, 8)
    np.testing.assert_array_equal(got, want)
    prompts = pl.scan_delta(str(root / "prompts")).filter(pl.col("model") == "rms-model.v2").collect()
    assert set(prompts["relation"].unique()) == set(RELATIONS) and set(prompts["shot"].unique()) == set(SHOTS)
    files = list((root / "heads").rglob("*.parquet"))
    assert len(files) == len(truth["parts"])  # one file per result, one row group per write
    assert {pq.ParquetFile(f).num_row_groups for f in files} == {3, 4}

    con = connect(root)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE heads)").fetchall())
    assert types["model"] == "VARCHAR" and types["relation"] == "VARCHAR" and types["shot"] == "INTEGER"
    assert types["output"] == "FLOAT[]" and types["layer"] == "SMALLINT" and types["result_id"] == "VARCHAR"
    n_heads_rows = sum(len(p["pid"]) * MODELS[m][2] * MODELS[m][3] for (m, _, _), p in truth["parts"].items())
    assert con.execute("SELECT count(*) FROM heads").fetchone()[0] == n_heads_rows
    rows = con.execute(
        "SELECT prompt_id, layer, head, output, attn_to_s FROM heads "
        "WHERE model = 'rms-model.v2' AND relation = 'language' AND shot = 0"
    ).fetchall()
    t = truth["parts"][("rms-model.v2", "language", 0)]
    assert len(rows) == len(t["pid"]) * 4 * 3
    for pid, layer, head, out, a in rows:
        i = list(t["pid"]).index(pid)
        np.testing.assert_array_equal(np.array(out, np.float32), t["heads"][i, layer, head])
        assert np.float32(a) == t["attn_s"][i, layer, head]
    # Nullable vectors: RMS model has no learned positions.
    nulls = con.execute(
        "SELECT model, count(*) FILTER (pos_embed IS NULL), count(*) FROM resid_end GROUP BY model ORDER BY model"
    ).fetchall()
    assert nulls == [("lnmodel", 0, 40), ("rms-model.v2", 40, 40)]
    # model_info / runs
    mi = con.execute("SELECT DISTINCT model, norm_kind, final_norm_gain, logit_softcap FROM model_info ORDER BY model").fetchall()
    assert [r[:2] for r in mi] == [("lnmodel", "layernorm"), ("rms-model.v2", "rmsnorm")]
    np.testing.assert_array_equal(np.array(mi[0][2], np.float32), truth["models"]["lnmodel"]["gain"])
    assert mi[0][3] is None
    run = con.execute("SELECT run_id, config, packages FROM runs").fetchall()
    assert run[0][0] == "run1" and json.loads(run[0][1]) == {"models": list(MODELS)}
    assert json.loads(con.execute("SELECT versions FROM runs").fetchall()[0][0])["heads"] == len(truth["parts"]) - 1
    assert json.loads(run[0][2])["duckdb"] == duckdb.__version__


def test_head_dla_answer_matches_numpy(synth):
    root, truth = synth
    want = expected_dla(truth)
    con = connect(root)
    rows = con.execute(
        "SELECT model, relation, shot, variant, prompt_id, layer, head, dla FROM head_dla_answer"
    ).fetchall()
    got = {r[:7]: r[7] for r in rows}
    assert len(rows) == len(got) == len(want)  # every head exactly once
    assert set(got) == set(want)
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=1e-5, atol=1e-9)
    # Centering matters for the layernorm model: without it the numbers differ.
    cols = [c[0] for c in con.execute("DESCRIBE head_dla_answer").fetchall()]
    assert cols == ["model", "relation", "shot", "variant", "prompt_id", "layer", "head", "dla"]


def _accuracy_truth(truth):
    out = {}
    for (model, relation, shot), t in truth["parts"].items():
        clean = np.array([v == "clean" for v in t["variant"]])
        out[(model, relation, shot)] = (
            int(clean.sum()),
            float(np.mean(t["p_ans"][clean].astype(np.float64))),
            float(np.mean(t["top1"][clean])),
            float(np.mean(t["metric"][clean].astype(np.float64))),
        )
    return out


def test_named_queries_listed():
    q = list_named_queries()
    assert set(q) >= {"accuracy_by_shot", "ledger_check", "top_heads_dla"}
    assert all(desc and not desc.startswith("-") for desc in q.values())
    with pytest.raises(ValueError, match="accuracy_by_shot"):
        named_query("no_such_query")


def test_accuracy_by_shot(synth):
    root, truth = synth
    rows = connect(root).sql(named_query("accuracy_by_shot")).pl()
    want = _accuracy_truth(truth)
    assert rows.height == len(want)
    for r in rows.iter_rows(named=True):
        n, p, acc, m = want[(r["model"], r["relation"], r["shot"])]
        assert r["n"] == n
        np.testing.assert_allclose([r["mean_p_answer"], r["top1_accuracy"], r["mean_metric_m"]], [p, acc, m], rtol=1e-6)


def test_ledger_check(synth):
    root, truth = synth
    rows = connect(root).sql(named_query("ledger_check")).pl()
    assert rows.height == len(truth["parts"])
    for r in rows.iter_rows(named=True):
        t = truth["parts"][(r["model"], r["relation"], r["shot"])]
        err = t["err"].astype(np.float64)
        assert r["n"] == err.size
        np.testing.assert_allclose(r["max_error"], err.max(), rtol=1e-6)
        rel = (err / np.maximum(1, np.abs(t["mlogit"].astype(np.float64)))).max()
        np.testing.assert_allclose(r["max_rel_error"], rel, rtol=1e-6)
        assert r["ok"] == bool(rel <= 1e-3)


def test_top_heads_dla(synth):
    root, truth = synth
    dla = expected_dla(truth)
    rows = connect(root).sql(named_query("top_heads_dla")).pl()
    for (model, relation, shot) in truth["parts"]:
        per_head: dict = {}
        for k, v in dla.items():
            if k[:3] == (model, relation, shot) and k[3] == "clean":
                per_head.setdefault((k[5], k[6]), []).append(v)
        means = sorted(((-np.mean(v), lh) for lh, v in per_head.items()))[:10]
        got = rows.filter((pl.col("model") == model) & (pl.col("relation") == relation) & (pl.col("shot") == shot))
        assert got.height == 10 < len(per_head)
        assert list(zip(got["layer"], got["head"])) == [lh for _, lh in means]
        np.testing.assert_allclose(got["mean_dla"].to_numpy(), [-m for m, _ in means], rtol=1e-5)
        assert got["rank"].to_list() == list(range(1, 11)) and set(got["n"]) == {N_CLEAN}


def test_run_query_formats(synth, tmp_path):
    root, truth = synth
    want = _accuracy_truth(truth)
    sql = named_query("accuracy_by_shot")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    def check(df: pl.DataFrame):
        assert df.height == len(want)
        for r in df.iter_rows(named=True):
            n, p, acc, m = want[(r["model"], r["relation"], int(r["shot"]))]
            assert r["n"] == n
            np.testing.assert_allclose([r["mean_p_answer"], r["top1_accuracy"], r["mean_metric_m"]], [p, acc, m], rtol=1e-6)

    import io

    check(pl.read_csv(io.StringIO(run_query(root, sql, fmt="csv"))))
    check(pl.DataFrame(json.loads(run_query(root, sql, fmt="json"))))
    out = tmp_path / "res" / "acc.parquet"
    assert run_query(root, sql, fmt="parquet", out=out) == str(out)
    check(pl.read_parquet(out))
    text = run_query(root, sql)
    assert "mean_p_answer" in text and "rms-model.v2" in text and f"({len(want)} rows)" in text
    with pytest.raises(ValueError, match="out"):
        run_query(root, sql, fmt="parquet")
    # Nested columns survive CSV as JSON.
    csv = run_query(root, "SELECT topk_ids FROM logits LIMIT 1", fmt="csv")
    assert json.loads(pl.read_csv(io.StringIO(csv))["topk_ids"][0]) == [1, 2]
    # Nothing was written to the store.
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_sql_error_lists_views(synth):
    root, _ = synth
    with pytest.raises(QueryError) as e:
        run_query(root, "SELECT * FROM no_such_table")
    msg = str(e.value)
    assert "no_such_table" in msg and "views:" in msg and "\n" not in msg
    for v in ("heads", "prompts", "head_dla_answer", "model_info", "runs"):
        assert v in msg
    with pytest.raises(QueryError, match="SELEC"):
        run_query(root, "SELEC 1")


def test_missing_tables_are_reported(synth, tmp_path):
    root, _ = synth
    # `layers` and `dla` were never written: connecting works, querying says what produces them.
    con = connect(root)
    with pytest.raises(duckdb.Error, match="table layers is empty: run `factrecall capture"):
        con.execute("SELECT * FROM layers").fetchall()
    with pytest.raises(QueryError, match="table dla is empty: run `factrecall capture"):
        run_query(root, "SELECT component, avg(value) FROM dla GROUP BY component")
    # An empty store: every table's view is a placeholder, the catalogue is empty, derived views name their inputs.
    from factrecall.storage.query import open_store

    empty = tmp_path / "empty"
    Store(empty)
    view = open_store(empty)
    assert view.sql("SELECT count(*) FROM results").fetchall()[0][0] == 0
    assert set(view.missing) == set(view_names()) - {"results", "stale", "damaged", "runs", "relations", "models", "reproductions",
                                                     "reproduction_claims", "drift"}
    assert "table heads is empty" in view.missing["head_dla_answer"]
    with pytest.raises(QueryError, match="table heads is empty"):
        run_query(empty, "SELECT * FROM head_dla_answer")


def test_views_cover_tables():
    from factrecall.stages import STAGES

    tables = {t for stage in STAGES.values() for t in stage.tables}
    from factrecall.storage.records import RECORDS

    derived = {"results", "stale", "damaged", "head_dla_answer", "head_set_pairs"}
    assert tables | derived | set(RECORDS) == set(view_names())
