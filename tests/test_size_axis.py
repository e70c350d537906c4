"""The size axis: the `models` record (parameter counts without loading weights) and the `claims_by_size` named
query, checked against values written by hand."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl
import pytest

from factrecall.flows.runner import ModelHandle
from factrecall.flows.sweep import model_records
from factrecall.storage.query import connect, named_query
from factrecall.storage.store import Store
from factrecall.tasks.models import parameter_count
from synthetic_store import put, table
from tiny_models import loaded_tiny_model, save_tiny_model_dir, tiny_model


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])  # gemma3 ties its unembedding to the embedding
def test_parameter_count_reads_the_saved_headers_like_the_loaded_model(family, tmp_path):
    model = tiny_model(family)
    unique = sum(p.numel() for p in model.parameters())  # a tied tensor once
    assert parameter_count(save_tiny_model_dir(family, tmp_path / family)) == unique
    assert parameter_count(tmp_path / "nowhere") is None
    record = ModelHandle("tiny", loaded=loaded_tiny_model(family)).record()
    assert record["n_params"] == unique and record["family"] == family
    assert record["n_kv_heads"] == model.config.num_key_value_heads and record["n_params_nominal"] is None


def test_a_models_record_needs_no_loaded_weights(tmp_path):
    directory = save_tiny_model_dir("qwen2", tmp_path / "tiny-qwen2")
    handle = ModelHandle(directory, cache_dir=tmp_path / "cache")
    (row,) = model_records("r", [handle])
    assert not handle.loaded and row["run_id"] == "r" and row["model"] == handle.model_id
    assert row["n_params"] == sum(p.numel() for p in tiny_model("qwen2").parameters())
    assert (row["family"], row["n_layers"], row["d_model"]) == ("qwen2", 3, 32)


def _claim_rows(values: dict[str, tuple[float, str]]) -> dict:
    names = list(values)
    return {"claim": names, "step": [4] * len(names), "statistic": ["mean"] * len(names),
            "value": [values[c][0] for c in names], "lo": [values[c][0] - 0.1 for c in names],
            "hi": [values[c][0] + 0.1 for c in names], "n": [20] * len(names), "threshold": [0.0] * len(names),
            "verdict": [values[c][1] for c in names], "note": [None] * len(names), "rule": ["r"] * len(names),
            "source_stage": ["final_layer"] * len(names), "source_result_id": ["x"] * len(names)}


def test_claims_by_size_pools_relations_and_orders_models_by_size(tmp_path):
    store = Store(tmp_path / "store")
    # (model, params): given out of size order; "unrecorded" has claims but no models record
    models = {"big": 1_500_000_000, "small": 135_000_000, "mid": 500_000_000}
    values = {  # (model, relation) -> value, verdict of the claim "final_layer_suppresses"
        ("big", "r1"): (0.9, "holds"), ("big", "r2"): (0.1, "inconclusive"),
        ("small", "r1"): (-0.2, "does not"), ("small", "r2"): (0.5, "holds"),
        ("mid", "r1"): (0.3, "holds"), ("mid", "r2"): (0.0, "not tested"),
        ("unrecorded", "r1"): (0.7, "holds"),
    }
    for (model, rel), v in values.items():
        put(store, "claims", (model, rel, 0), {"claims": table("claims", _claim_rows({"final_layer_suppresses": v}))})
    now = datetime.now(timezone.utc)
    with store.writing():
        store.append_records("models", [
            {"run_id": "t", "model": m, "ref": m, "family": "f", "n_params": p + 7, "n_params_nominal": p,
             "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_model": 8, "vocab_size": 10, "dtype": "float32",
             "file_sha256": None, "recorded_at": now} for m, p in models.items()])
    got = connect(store.root).sql(named_query("claims_by_size")).pl()
    assert got["relation"].head(4).to_list() == ["all"] * 4  # the pooled rows first, then each relation
    pooled = got.filter(pl.col("relation") == "all")
    assert pooled["model"].to_list() == ["small", "mid", "big", "unrecorded"]  # by size, unknown size last
    assert pooled["params"].to_list() == [135_000_000, 500_000_000, 1_500_000_000, None]  # the published count
    by_model = {r["model"]: r for r in pooled.to_dicts()}
    assert by_model["big"]["value"] == pytest.approx(0.5) and by_model["big"]["n_holds"] == 1
    assert by_model["small"]["value"] == pytest.approx(0.15) and by_model["small"]["n_relations"] == 2
    assert by_model["mid"]["value"] == pytest.approx(0.3) and by_model["mid"]["n_relations"] == 1  # not tested: out
    assert (by_model["small"]["min_value"], by_model["small"]["max_value"]) == pytest.approx((-0.2, 0.5))
    assert by_model["big"]["lo"] is None and by_model["big"]["verdict"] is None
    single = got.filter((pl.col("relation") == "r1") & (pl.col("model") == "small")).row(0, named=True)
    assert (single["value"], single["lo"], single["hi"], single["verdict"]) == pytest.approx((-0.2, -0.3, -0.1, "does not"))
    assert got.filter(pl.col("relation") != "all").height == 6  # every tested partition, once


def test_the_size_axis_plot_needs_two_sized_models_and_stays_small(tmp_path):
    import io

    from PIL import Image

    from factrecall.storage.export import export_plots
    from factrecall.tasks.plots import size_axis

    def row(model, params, claim, shot, value):
        return {"claim": claim, "statistic": "mean", "relation": "all", "shot": shot, "model": model,
                "params": params, "value": value, "min_value": value - 0.1, "max_value": value + 0.1}

    claims = ["argument_heads", "mlp_linear", "task_push", "final_layer_suppresses", "mitigation_helps"]
    rows = [row(m, p, c, s, 0.1 * i) for i, c in enumerate(claims) for s in (0, 2)
            for m, p in (("a", 1e8), ("b", 5e8), ("c", 1.5e9))]
    png = size_axis(rows)
    width, height = Image.open(io.BytesIO(png)).size
    assert 800 <= width <= 1760 and height <= 800  # 5 panels: 4 columns, 2 rows
    assert size_axis([r for r in rows if r["model"] == "a"]) is None  # one model: no axis to draw
    unsized = [dict(r, params=None) if r["model"] != "a" else r for r in rows]
    assert size_axis(unsized) is None  # models of unknown size are not placed on the axis
    per_relation = [dict(r, relation="r1") for r in rows]
    assert size_axis(per_relation) is None  # only pooled rows are drawn
    copies = [dict(r, model=r["model"] + ".bf16", dtype="bfloat16") for r in rows if r["model"] == "a"]
    assert size_axis([r for r in rows if r["model"] == "a"] + copies) is None  # a bf16 copy is not a second size
    only_bf16 = [dict(r, model="b.bf16", dtype="bfloat16") for r in rows if r["model"] == "b"]
    assert size_axis([r for r in rows if r["model"] == "a"] + only_bf16) is not None  # a size measured in bf16 only

    store = Store(tmp_path / "store")  # and `factrecall plots` writes it from the query
    for model, rel in (("small", "r1"), ("big", "r1")):
        put(store, "claims", (model, rel, 0), {"claims": table("claims", _claim_rows({"task_push": (0.4, "holds")}))})
    with store.writing():
        store.append_records("models", [
            {"run_id": "t", "model": m, "ref": m, "family": "f", "n_params": p, "n_params_nominal": None,
             "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_model": 8, "vocab_size": 10, "dtype": "float32",
             "file_sha256": None, "recorded_at": datetime.now(timezone.utc)} for m, p in (("small", 10), ("big", 99))])
    written = export_plots(store.root, tmp_path / "plots")
    assert tmp_path / "plots" / "claims" / "size_axis.png" in written


def test_the_size_axis_labels_stay_inside_their_own_panel():
    from factrecall.tasks.plots import _size_axis_figure

    statistic = ("path-patching effect% of the strongest head (simultaneous 95% interval over all heads, "
                 "the longest description a claim has today, and then some more)")
    rows = [{"claim": f"claim_{c}", "statistic": statistic, "relation": "all", "shot": 0, "model": m, "params": p,
             "value": 0.1, "min_value": 0.0, "max_value": 0.2}
            for c in range(8) for m, p in (("a", 1.35e8), ("b", 4.94e8), ("c", 1.54e9))]
    fig = _size_axis_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    whole = fig.bbox
    for ax in axes:
        label = ax.yaxis.label.get_window_extent(renderer)
        assert whole.x0 <= label.x0 and label.x1 <= whole.x1 and whole.y0 <= label.y0 and label.y1 <= whole.y1
        for other in axes:
            if other is not ax:
                assert not label.overlaps(other.get_window_extent(renderer)), (ax.get_title(), other.get_title())
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert ticks == ["135M", "494M", "1.5B"]  # each model's size, read as people write it
    with_family = _size_axis_figure([dict(r, family={"a": "llama", "b": "qwen2", "c": "qwen2"}[r["model"]])
                                     for r in rows])
    assert [t.get_text() for t in with_family.axes[0].get_xticklabels()] == ["135M\nllama", "494M\nqwen2", "1.5B\nqwen2"]


def test_dtype_agreement_pairs_each_low_precision_claim_with_its_float32_claim(tmp_path):
    store = Store(tmp_path / "store")
    claims = {  # model -> claim -> (value, verdict)
        "m": {"task_push": (0.40, "holds"), "final_layer_suppresses": (0.05, "inconclusive")},
        "m.bf16": {"task_push": (0.38, "holds"), "final_layer_suppresses": (0.12, "holds")},
        "other.bf16": {"task_push": (0.3, "holds")},  # no float32 reference: no row
    }
    for model, values in claims.items():
        put(store, "claims", (model, "r1", 0), {"claims": table("claims", _claim_rows(values))})
    got = {r["claim"]: r for r in connect(store.root).sql(named_query("dtype_agreement")).pl().to_dicts()}
    assert set(got) == {"task_push", "final_layer_suppresses"}
    push, final = got["task_push"], got["final_layer_suppresses"]
    assert (push["model"], push["dtype"], push["relation"], push["shot"]) == ("m", "bfloat16", "r1", 0)
    assert push["difference"] == pytest.approx(-0.02) and push["same_verdict"] is True
    assert final["value_float32"] == pytest.approx(0.05) and final["value_low"] == pytest.approx(0.12)
    assert final["same_verdict"] is False
