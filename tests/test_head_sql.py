"""Views and named queries of the "heads" stage over a synthetic store, checked against plain Python."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from factrecall.stages import STAGES, producers
from factrecall.storage.query import (
    QueryError,
    connect,
    list_named_queries,
    named_query,
    query_params,
    run_query,
    view_names,
)
from factrecall.storage.schema import SCHEMAS
from factrecall.storage.store import Store
from synthetic_store import put

HEAD_TABLES = tuple(STAGES["heads"].schemas)

MODEL, OTHER_MODEL = "m1", "m2"
D, N_LAYERS, N_HEADS, N_PROMPTS = 4, 4, 3, 6
SHOTS = (0, 1)
# Hand-made head sets (set order) per (relation, shot): overlaps of every kind, including disjoint sets.
SETS = {
    ("capital", 0): [(1, 0), (2, 1), (3, 2)],
    ("capital", 1): [(2, 1), (1, 0)],
    ("language", 0): [(2, 1), (0, 2), (3, 0), (3, 2)],
    ("language", 1): [(0, 0)],
}
HIDDEN_SHOT = 2  # capital/shot=2: capture committed, head tables on disk but never committed


def name(l: int, h: int) -> str:
    return f"L{l}.H{h}"


def _table(table: str, cols: dict) -> pa.Table:
    """``table``'s rows from columns; a column not given is null (newer statistics the queries here do not test)."""
    sch = SCHEMAS[table]
    n = len(next(iter(cols.values())))
    return pa.Table.from_arrays([pa.array(cols.get(f.name, [None] * n), f.type) for f in sch], schema=sch)


def _logits(n: int, rng) -> pa.Table:
    return _table("logits", dict(
        prompt_id=list(range(n)), variant=["clean"] * n, answer_logit=rng.normal(size=n),
        p_answer=rng.uniform(size=n), answer_rank=[0] * n, metric_m=rng.normal(size=n), top1=[True] * n,
        topk_ids=[[1]] * n, topk_logits=[[1.0]] * n, final_norm_scale=[1.0] * n, ledger_error=[0.0] * n,
    ))


def _head_tables(relation: str, shot: int, rng, with_relation: bool) -> tuple[dict, dict]:
    """The four head tables of one partition and the Python truth."""
    heads = [(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)]
    chosen = SETS[(relation, shot)]
    effect = {lh: float(rng.uniform(-4, 6)) for lh in heads}
    for i, lh in enumerate(chosen):  # set heads most negative, in set order
        effect[lh] = -40.0 + 8 * i + float(rng.uniform(0, 1))
    eff_rel = {lh: (float(rng.uniform(-10, 2)) if with_relation else None) for lh in heads}
    r = {lh: float(rng.uniform(-1, 1)) for lh in heads}
    attn = rng.uniform(0, 1, (N_PROMPTS, N_LAYERS, N_HEADS))
    dla = rng.normal(0, 1, (N_PROMPTS, N_LAYERS, N_HEADS))
    rows = [(p, l, h) for p in range(N_PROMPTS) for (l, h) in heads]
    head_prompts = _table("head_prompts", dict(
        prompt_id=[p for p, _, _ in rows], layer=[l for _, l, _ in rows], head=[h for _, _, h in rows],
        attn_to_s=[attn[p, l, h] for p, l, h in rows], dla_subject=[dla[p, l, h] for p, l, h in rows],
        dla_answer=[0.5] * len(rows), subject_rank=[3] * len(rows), m_clean=[2.0] * len(rows),
        effect_subject_pct=[effect[(l, h)] for _, l, h in rows],
        effect_relation_pct=[eff_rel[(l, h)] for _, l, h in rows],
    ))
    mlp = _table("mlp_patching", dict(
        prompt_id=[p for p in range(N_PROMPTS) for _ in range(N_LAYERS)],
        layer=list(range(N_LAYERS)) * N_PROMPTS,
        effect_subject_pct=rng.normal(size=N_PROMPTS * N_LAYERS),
        effect_relation_pct=rng.normal(size=N_PROMPTS * N_LAYERS),
    ))
    order = {lh: i + 1 for i, lh in enumerate(chosen)}
    summary = _table("head_summary", dict(
        layer=[l for l, _ in heads], head=[h for _, h in heads], n=[N_PROMPTS] * len(heads),
        mean_attn_to_s=[float(attn[:, l, h].mean()) for l, h in heads],
        mean_dla_subject=[float(dla[:, l, h].mean()) for l, h in heads],
        mean_dla_answer=[0.5] * len(heads), median_subject_rank=[3.0] * len(heads),
        pearson_r=[r[lh] for lh in heads], r_lo=[r[lh] - 0.1 for lh in heads], r_hi=[r[lh] + 0.1 for lh in heads],
        effect_pct=[effect[lh] for lh in heads], effect_lo=[effect[lh] - 2 for lh in heads],
        effect_hi=[effect[lh] + 2 for lh in heads], effect_relation_pct=[eff_rel[lh] for lh in heads],
        effect_se=[1.0] * len(heads), effect_simul_lo=[effect[lh] - 4 for lh in heads],
        effect_simul_hi=[effect[lh] + 4 for lh in heads], significant=[effect[lh] + 4 < 0 for lh in heads],
        attention_passes=[True] * len(heads), in_head_set=[lh in order for lh in heads],
        set_order=[order.get(lh) for lh in heads],
    ))
    sets = _table("head_sets", dict(
        heads=[[name(*lh) for lh in chosen]], n_heads=[len(chosen)], no_heads_reason=[None],
        n_tested=[N_LAYERS * N_HEADS], n_significant=[len(chosen)], rule=[json.dumps({"coverage": 0.8})],
        coverage=[0.8], covered_share=[0.8], covered_share_all=[0.7],
        set_effect_pct=[sum(effect[lh] for lh in chosen)],
        set_effect_relation_pct=[sum(eff_rel[lh] for lh in chosen) if with_relation else None],
        n_prompts=[N_PROMPTS], n_corrupt_subject=[N_PROMPTS], n_corrupt_relation=[N_PROMPTS if with_relation else 0],
        relation_corruption=["capital->city" if with_relation else "no relation word"],
        seconds_patching=[1.5], skipped_reason=[None],
    ))
    tables = {"head_prompts": head_prompts, "mlp_patching": mlp, "head_summary": summary, "head_sets": sets}
    truth = dict(effect=effect, eff_rel=eff_rel, r=r, attn=attn, dla=dla, set=chosen,
                 mean_attn={lh: float(attn[:, lh[0], lh[1]].mean()) for lh in heads})
    return tables, truth


def build(root: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    store = Store(root)
    truth = {}
    for (relation, shot) in SETS:
        key = (MODEL, relation, shot)
        # The capture first, then the heads stage of the same key, computed on it.
        cap = put(store, "capture", key, {"logits": _logits(N_PROMPTS, rng)}, n_prompts=N_PROMPTS, run_id="run1")
        tables, t = _head_tables(relation, shot, rng, with_relation=(relation, shot) != ("language", 1))
        put(store, "heads", key, tables, upstream=(cap,), n_prompts=N_PROMPTS, run_id="run2")
        truth[(relation, shot)] = t
    # A skipped partition of another model (empty head set): left out of the overlap query.
    key = (OTHER_MODEL, "capital", 0)
    cap = put(store, "capture", key, {"logits": _logits(N_PROMPTS, rng)}, n_prompts=N_PROMPTS, run_id="run1")
    tables, _ = _head_tables("capital", 0, rng, True)
    sets = tables["head_sets"].set_column(0, "heads", pa.array([[]], SCHEMAS["head_sets"].field("heads").type))
    sets = sets.set_column(sets.schema.get_field_index("skipped_reason"), "skipped_reason",
                           pa.array(["fewer than 2 subjects"]))
    put(store, "heads", key, {"head_sets": sets}, upstream=(cap,), n_prompts=N_PROMPTS, run_id="run2")
    # capital/shot=2: capture committed; head tables written but never committed as a result (as after a
    # crash before the result's record): invisible.
    hidden = (MODEL, "capital", HIDDEN_SHOT)
    cap = put(store, "capture", hidden, {"logits": _logits(N_PROMPTS, rng)}, n_prompts=N_PROMPTS, run_id="run1")
    tables, _ = _head_tables("capital", 0, rng, True)
    with store.writing(), store.writer("heads", hidden, {t: SCHEMAS[t] for t in tables}) as w:
        for name_, tab in tables.items():
            w.write(name_, tab)
        w._close()  # the files are complete on disk; no commit follows
        w._state = "crashed"
    return truth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads-store")
    return root, build(root)


def _df(root, query: str, **params) -> pl.DataFrame:
    return pl.read_csv(io.StringIO(run_query(root, named_query(query), fmt="csv", params=params or None)))


# -- views --------------------------------------------------------------------------------------------

def test_views_and_producers():
    assert set(HEAD_TABLES) <= set(view_names())
    assert all(producers()[t] == "factrecall heads" for t in HEAD_TABLES)
    assert all(producers()[t] == "factrecall capture" for t in STAGES["capture"].schemas)


def test_stages_coexist_and_uncommitted_is_hidden(synth):
    root, truth = synth
    con = connect(root)
    # Both stages' results are current for each key; the capture's table is still there.
    stages = con.execute(
        "SELECT relation, shot, list(stage ORDER BY stage) FROM results WHERE model = 'm1' AND status = 'current' "
        "GROUP BY ALL"
    ).fetchall()
    want = {(r, s): ["capture", "heads"] for r, s in SETS} | {("capital", HIDDEN_SHOT): ["capture"]}
    assert {(r, s): st for r, s, st in stages} == want
    logits = dict(con.execute("SELECT relation || '/' || shot, count(*) FROM logits WHERE model = 'm1' GROUP BY ALL").fetchall())
    assert logits == {f"{r}/{s}": N_PROMPTS for r, s in [*SETS, ("capital", HIDDEN_SHOT)]}
    # Every head table shows exactly the committed head partitions, never capital/shot=2.
    expected_rows = {"head_prompts": N_PROMPTS * N_LAYERS * N_HEADS, "mlp_patching": N_PROMPTS * N_LAYERS,
                     "head_summary": N_LAYERS * N_HEADS, "head_sets": 1}
    for table, n in expected_rows.items():
        got = dict(con.execute(
            f"SELECT relation || '/' || shot, count(*) FROM {table} WHERE model = 'm1' GROUP BY ALL").fetchall())
        assert got == {f"{r}/{s}": n for r, s in SETS}, table
        assert list((Path(root) / table / f"model={MODEL}" / "relation=capital" / f"shot={HIDDEN_SHOT}").rglob("*.parquet"))
        assert con.execute(f"SELECT count(*) FROM stored.{table} WHERE shot = {HIDDEN_SHOT}").fetchall()[0][0] == 0
        cols = [c[0] for c in con.execute(f"DESCRIBE {table}").fetchall()]
        assert cols == ["model", "relation", "domain", "shot", "result_id", "capture_id", *SCHEMAS[table].names]
    assert con.execute("SELECT count(*) FROM head_summary WHERE model = 'm2'").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM head_sets WHERE model = 'm2'").fetchall()[0][0] == 1


def test_missing_head_tables_name_their_command(tmp_path):
    Store(tmp_path)
    for table in HEAD_TABLES:
        with pytest.raises(QueryError, match=f"table {table} is empty: run `factrecall heads` first"):
            run_query(tmp_path, f"SELECT * FROM {table}")
    with pytest.raises(QueryError, match="table logits is empty: run `factrecall capture` first"):
        run_query(tmp_path, "SELECT * FROM logits")


# -- parameters ---------------------------------------------------------------------------------------

def test_query_params_parsing():
    assert query_params(named_query("argument_heads")) == ["model", "relation"]
    assert query_params(named_query("head_scatter")) == ["model", "relation"]
    assert query_params(named_query("top_heads_patching")) == []
    assert query_params(named_query("head_set_overlap")) == []
    sql = "SELECT $b, '$no' AS \"$nope\", $a -- $comment\n/* $block */, $$ $dollar $$, 'it''s $x', $b"
    assert query_params(sql) == ["b", "a"]


def test_named_queries_list_params():
    q = list_named_queries()
    assert {"argument_heads", "top_heads_patching", "head_set_overlap", "head_scatter"} <= set(q)
    for name_ in ("argument_heads", "head_scatter"):
        assert "--param model=value" in q[name_] and "--param relation=value" in q[name_]
    for name_ in ("top_heads_patching", "head_set_overlap", "accuracy_by_shot"):
        assert "--param" not in q[name_] and q[name_]


def test_parameter_errors(synth):
    root, _ = synth
    sql = named_query("argument_heads")
    with pytest.raises(QueryError) as e:
        run_query(root, sql)
    assert "model, relation" in str(e.value) and "--param model=value --param relation=value" in str(e.value)
    with pytest.raises(QueryError, match=r"missing query parameter\(s\): relation\n"):
        run_query(root, sql, params={"model": MODEL})
    with pytest.raises(QueryError, match="unknown query parameter.*shot"):
        run_query(root, sql, params={"model": MODEL, "relation": "capital", "shot": "0"})
    with pytest.raises(QueryError, match="unknown query parameter.*model.*no parameters"):
        run_query(root, named_query("top_heads_patching"), params={"model": MODEL})
    with pytest.raises(QueryError, match="must be strings"):
        run_query(root, "SELECT $n::INTEGER AS n", params={"n": 3})
    # Values are strings; SQL casts them.
    assert json.loads(run_query(root, "SELECT $n::INTEGER + 1 AS n", fmt="json", params={"n": "41"})) == [{"n": 42}]
    # Values are bound, not spliced: quotes are data (and a model named so is not in the store).
    with pytest.raises(QueryError, match="model=m1' OR '1'='1 matches nothing.*models with results: m1, m2"):
        _df(root, "argument_heads", model="m1' OR '1'='1", relation="capital")


# -- named queries ------------------------------------------------------------------------------------

@pytest.mark.parametrize("relation", ["capital", "language"])
def test_argument_heads(synth, relation):
    root, truth = synth
    df = _df(root, "argument_heads", model=MODEL, relation=relation)
    assert set(df["model"]) == {MODEL} and set(df["relation"]) == {relation}
    want = [(s, i + 1, lh) for s in SHOTS for i, lh in enumerate(truth[(relation, s)]["set"])]
    assert list(zip(df["shot"], df["set_order"], zip(df["layer"], df["head"]))) == want
    assert df["head_name"].to_list() == [name(*lh) for _, _, lh in want]
    for row in df.iter_rows(named=True):
        t = truth[(relation, row["shot"])]
        lh = (row["layer"], row["head"])
        np.testing.assert_allclose(row["effect_pct"], t["effect"][lh], rtol=1e-12)
        np.testing.assert_allclose([row["effect_lo"], row["effect_hi"]], [t["effect"][lh] - 2, t["effect"][lh] + 2])
        np.testing.assert_allclose(row["mean_attn_to_s"], t["mean_attn"][lh], rtol=1e-12)
        np.testing.assert_allclose([row["pearson_r"], row["r_lo"], row["r_hi"]],
                                   [t["r"][lh], t["r"][lh] - 0.1, t["r"][lh] + 0.1], rtol=1e-12)
        if t["eff_rel"][lh] is None:  # language/1 had no relation-word corruption
            assert row["effect_relation_pct"] is None and row["specificity"] is None
        else:
            np.testing.assert_allclose(row["specificity"], t["effect"][lh] - t["eff_rel"][lh], rtol=1e-12)
    # The set order agrees with head_sets.heads.
    con = connect(root)
    for s in SHOTS:
        heads = con.execute("SELECT heads FROM head_sets WHERE model = ? AND relation = ? AND shot = ?",
                            [MODEL, relation, s]).fetchone()[0]
        assert heads == df.filter(pl.col("shot") == s)["head_name"].to_list()
    with pytest.raises(QueryError, match="model=nope matches nothing"):
        _df(root, "argument_heads", model="nope", relation=relation)


def test_top_heads_patching(synth):
    root, truth = synth
    df = _df(root, "top_heads_patching")
    assert set(zip(df["model"], df["relation"], df["shot"])) == {(MODEL, r, s) for r, s in SETS}
    for (relation, shot), t in truth.items():
        got = df.filter((pl.col("relation") == relation) & (pl.col("shot") == shot))
        want = sorted(t["effect"], key=lambda lh: (t["effect"][lh], lh))[:10]
        assert len(t["effect"]) > 10 and got.height == 10
        assert list(zip(got["layer"], got["head"])) == want
        assert got["rank"].to_list() == list(range(1, 11))
        np.testing.assert_allclose(got["effect_pct"].to_numpy(), [t["effect"][lh] for lh in want], rtol=1e-12)
        assert got["in_head_set"].to_list() == [lh in t["set"] for lh in want]
        # The head set leads the ranking (its effects were made the most negative).
        assert want[: len(t["set"])] == t["set"]


def test_head_set_overlap(synth):
    root, truth = synth
    df = _df(root, "head_set_overlap")
    keys = sorted(truth)  # (relation, shot) of model m1; m2's only partition was skipped
    pairs = [(a, b) for a, b in itertools.combinations(keys, 2)]
    assert list(zip(zip(df["relation_a"], df["shot_a"]), zip(df["relation_b"], df["shot_b"]))) == pairs
    assert set(df["model"]) == {MODEL}
    for row, (a, b) in zip(df.iter_rows(named=True), pairs):
        sa, sb = set(truth[a]["set"]), set(truth[b]["set"])
        assert (row["n_a"], row["n_b"]) == (len(sa), len(sb))
        assert row["n_intersection"] == len(sa & sb) and row["n_union"] == len(sa | sb)
        np.testing.assert_allclose(row["jaccard"], len(sa & sb) / len(sa | sb), rtol=1e-12)
    # The hand-made sets cover identical-order-insensitive, partial and disjoint overlaps.
    j = {(a, b): r for (a, b), r in zip(pairs, df["jaccard"])}
    assert j[(("capital", 0), ("capital", 1))] == pytest.approx(2 / 3)
    assert j[(("capital", 1), ("language", 1))] == 0.0


def test_head_set_overlap_summary_groups_the_pairs(synth):
    root, truth = synth
    df = _df(root, "head_set_overlap_summary")
    groups = {}
    for a, b in itertools.combinations(sorted(truth), 2):
        sa, sb = set(truth[a]["set"]), set(truth[b]["set"])
        kind = ("same relation, other shot" if a[0] == b[0] else
                "other relation, same shot" if a[1] == b[1] else "other relation, other shot")
        groups.setdefault(kind, []).append(len(sa & sb) / len(sa | sb))
    assert sorted(df["comparison"]) == sorted(groups)
    for row in df.iter_rows(named=True):
        js = groups[row["comparison"]]
        assert row["n_pairs"] == len(js)
        np.testing.assert_allclose([row["mean_jaccard"], row["min_jaccard"], row["max_jaccard"]],
                                   [np.mean(js), min(js), max(js)], rtol=1e-12)


def test_head_set_specificity(synth):
    root, truth = synth
    df = _df(root, "head_set_specificity").filter(pl.col("model") == MODEL)
    assert df.height == len(truth)
    for row in df.iter_rows(named=True):
        t = truth[(row["relation"], row["shot"])]
        assert row["n_heads"] == len(t["set"])
        np.testing.assert_allclose(row["set_effect_pct"], sum(t["effect"][lh] for lh in t["set"]), rtol=1e-12)
        if t["eff_rel"][t["set"][0]] is None:
            assert row["set_effect_relation_pct"] is None and row["specificity"] is None
        else:
            rel = sum(t["eff_rel"][lh] for lh in t["set"])
            np.testing.assert_allclose(row["specificity"], row["set_effect_pct"] - rel, rtol=1e-9)


@pytest.mark.parametrize("relation", ["capital", "language"])
def test_head_scatter(synth, relation):
    root, truth = synth
    df = _df(root, "head_scatter", model=MODEL, relation=relation)
    for s in SHOTS:
        t = truth[(relation, s)]
        top = sorted(t["r"], key=lambda lh: (-abs(t["r"][lh]), lh))[:5]
        got = df.filter(pl.col("shot") == s)
        assert got.height == 5 * N_PROMPTS
        want = [(rank + 1, lh, p) for rank, lh in enumerate(top) for p in range(N_PROMPTS)]
        assert list(zip(got["rank"], zip(got["layer"], got["head"]), got["prompt_id"])) == want
        np.testing.assert_allclose(got["attn_to_s"].to_numpy(), [t["attn"][p, l, h] for _, (l, h), p in want],
                                   rtol=1e-6)
        np.testing.assert_allclose(got["dla_subject"].to_numpy(), [t["dla"][p, l, h] for _, (l, h), p in want],
                                   rtol=1e-6)
        np.testing.assert_allclose(got["pearson_r"].to_numpy(), [t["r"][lh] for _, lh, _ in want], rtol=1e-12)
