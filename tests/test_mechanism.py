"""Steps 2-3 on tiny random models: edits at END against hook references, the argument swap with
X' = X, the stage's tables end to end (no Prefect), and on smollm2-135m the task-aware push."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from factrecall.flows.runner import ResultReader, run_stage
from factrecall.storage.query import connect, named_query, open_store, run_query
from factrecall.storage.store import Store
from factrecall.tasks.mlp_stage import (
    MlpConfig,
    StoreMismatchError,
    argument_swap,
    model_swap_plot,
    parse_head,
    stored_end_vectors,
)
from factrecall.tasks.capture import _first_tensor, capture_batch, right_pad
from factrecall.tasks.end_edits import end_logits_with_edits
from factrecall.tasks.mlp_regression import fit_per_prompt, task_component
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.relations import get_relation
from factrecall.tasks.tokenization import tokenize_prompts
from factrecall.storage.columns import vectors
from tiny_models import FAMILIES, loaded_tiny_model

N = 12


def _rows(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (6, 9, 4)]


def _hooked_end_logits(lm, rows, layer, module_path, edit):
    """Reference: a hook that rewrites the module's output (or input) at END with `edit(view, rows, end)`."""
    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1
    idx = torch.arange(len(rows))
    module = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], module_path)

    def pre(m, args):
        z = args[0].clone()
        edit(z, idx, end)
        return (z,) + tuple(args[1:])

    handle = module.register_forward_pre_hook(pre)
    try:
        with torch.inference_mode():
            out = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    return out[idx, end].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_no_edit_is_the_model_and_a_head_swap_equals_replacing_its_z(family):
    lm = loaded_tiny_model(family)
    rows, twin_rows = _rows(5), _rows(6)
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    twin = capture_batch(lm.model, lm.adapter, lm.dims, twin_rows, 0)
    torch.testing.assert_close(end_logits_with_edits(lm, rows, {}), cap.logits, atol=1e-5, rtol=1e-5)
    layer, head, dh = lm.dims.n_layers - 1, 1, lm.dims.d_head
    swapped = end_logits_with_edits(lm, rows, {("out_proj", layer): twin.head_raw[:, layer, head] - cap.head_raw[:, layer, head]})
    # reference: replace head's z at END with the twin's z (z recovered from the twin's own forward)
    store = {}
    out_proj = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], lm.adapter.out_proj)
    h = out_proj.register_forward_pre_hook(lambda m, a: store.__setitem__("z", a[0].detach().clone()))
    ids, mask = right_pad(twin_rows, 0, lm.device)
    with torch.inference_mode():
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    h.remove()
    twin_end = mask.sum(1) - 1
    z_twin = store["z"][torch.arange(3), twin_end, head * dh:(head + 1) * dh]

    def put(z, idx, end):
        z[idx, end, head * dh:(head + 1) * dh] = z_twin

    reference = _hooked_end_logits(lm, rows, layer, lm.adapter.out_proj, put)
    torch.testing.assert_close(swapped, reference, atol=2e-5, rtol=2e-5)
    assert (reference - cap.logits).abs().max() > 1e-4  # the swap really changes something


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_whole_mlp_output_at_end_equals_zeroing_it(family):
    lm = loaded_tiny_model(family)
    rows = _rows(8)
    cap = capture_batch(lm.model, lm.adapter, lm.dims, rows, 0)
    layer = 0
    removed = end_logits_with_edits(lm, rows, {("mlp_out", layer): -cap.mlp_out[:, layer]})
    ids, mask = right_pad(rows, 0, lm.device)
    end = mask.sum(1) - 1
    idx = torch.arange(3)
    module = lm.adapter.layer_part(lm.adapter.layer_modules(lm.model)[layer], lm.adapter.mlp_out)

    def zero(m, args, output):
        out = _first_tensor(output)
        view = (out.reshape(3, ids.shape[1], -1) if lm.adapter.mlp_out_flat else out).clone()
        view[idx, end] = 0
        return view.reshape(out.shape)

    h = module.register_forward_hook(zero)
    with torch.inference_mode():
        reference = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[idx, end].float()
    h.remove()
    torch.testing.assert_close(removed, reference, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="outside the model"):
        end_logits_with_edits(lm, rows, {("mlp_out", 99): cap.mlp_out[:, 0]})


def test_argument_swap_with_the_same_subject_changes_nothing():
    lm = loaded_tiny_model("llama")
    relation = get_relation("paper.capital")
    clean = tokenize_prompts(lm.tokenizer, build_prompts(relation, 1, 0, max_prompts=6), lm.max_length)
    same = [type(p)(**{**p.__dict__, "prompt": type(p.prompt)(**{**p.prompt.__dict__,
                                                                  "query_subject": p.prompt.subject})}) for p in clean]
    heads = [(0, 0), (1, 2), (2, 1)]
    out = argument_swap(lm, relation, clean, same, heads, batch_size=4)
    assert (out["top1_after"] == out["top1_before"]).all()
    assert (out["swap_token"] == np.array([p.answer_token_id for p in clean])).all()


def test_head_names_are_checked_against_the_model():
    assert parse_head("L3.H2", 4, 4) == (3, 2)
    with pytest.raises(ValueError, match="outside the model"):
        parse_head("L4.H0", 4, 4)
    with pytest.raises(ValueError, match="bad head name"):
        parse_head("layer3", 4, 4)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The mlp stage on a tiny random model. Random weights carry no significant head effect, so the
    heads stage's rule is relaxed here (every head with a negative effect is a candidate, no attention
    floor) to give the stage a head set to work on; the rule itself is tested in test_head_stats."""
    from factrecall.tasks import heads_stage

    real = heads_stage.select_head_set

    def unfiltered(effect, attention, rule, effect_hi=None):
        return real(effect, attention, dataclasses.replace(rule, attention_floor=0.0), None)

    root = tmp_path_factory.mktemp("mlp")
    lm = loaded_tiny_model("gemma3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(heads_stage, "select_head_set", unfiltered)
        outcome = run_stage(root, "mlp", lm, get_relation("paper.capital"), 0,
                            MlpConfig(max_prompts=N, n_boot=50, batch_size=5), "t")
    return root, lm, outcome


def test_on_random_weights_the_rule_finds_no_argument_passing_heads_and_mlp_says_so(tmp_path):
    lm = loaded_tiny_model("gemma3")
    outcome = run_stage(tmp_path, "mlp", lm, get_relation("paper.capital"), 0,
                        MlpConfig(max_prompts=N, n_boot=50, batch_size=5), "t")
    assert outcome.summary["skipped_reason"].startswith("no argument-passing heads")
    con = connect(tmp_path)
    assert con.sql("SELECT skipped_reason FROM function_application").fetchall()[0][0].startswith(
        "no argument-passing heads")
    assert "regression_betas" in open_store(tmp_path).missing  # nothing was regressed on noise


def _capture(root, lm) -> ResultReader:
    store = Store(root)
    return ResultReader(store, store.catalog().selected((lm.model_id, "paper.capital", 0), "capture"))


def _one(con, sql):
    return con.sql(sql).fetchall()[0]


def test_the_stage_ran_the_head_analysis_and_regressed_from_the_first_head_layer(analysed):
    root, lm, outcome = analysed
    assert outcome.status == "written"
    con = connect(root)
    heads = _one(con, "SELECT heads FROM head_sets")[0]
    assert heads, "the tiny model's head set is empty: the test would not exercise the stage"
    first = min(int(h.split(".")[0][1:]) for h in heads)
    L, H = lm.dims.n_layers, lm.dims.n_heads
    layers = _one(con, "SELECT layers, head_set FROM function_application")
    assert list(layers[0]) == list(range(first, L)) and list(layers[1]) == list(heads)
    assert _one(con, "SELECT count(*) FROM regression_betas")[0] == N * (L - first) * H
    flagged = sorted(r[0] for r in con.sql("SELECT DISTINCT 'L' || layer || '.H' || head FROM regression_betas "
                                           "WHERE in_head_set").fetchall())
    assert flagged == sorted(heads)


def test_c_plus_sum_beta_o_reproduces_the_mlp_output_from_the_stored_vectors(analysed):
    root, lm, _ = analysed
    L, H, d = lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model
    vec = stored_end_vectors(_capture(root, lm), N, 0, L, H, d)
    for k in range(L):
        fit = fit_per_prompt(vec.heads[:, k], vec.mlp[:, k])
        c = task_component(vec.heads[:, k], vec.mlp[:, k], fit.beta)
        rebuilt = c + np.einsum("nh,nhd->nd", fit.beta, vec.heads[:, k].astype(np.float64))
        np.testing.assert_allclose(rebuilt, vec.mlp[:, k], rtol=0, atol=1e-9)


def test_inconsistent_stored_vectors_are_refused(analysed, monkeypatch):
    root, lm, _ = analysed
    capture = _capture(root, lm)
    real = capture.read

    def tampered(table, columns=None, filters=None):
        t = real(table, columns, filters)
        if table == "layers":
            col = t["mlp_out"].combine_chunks()
            values = col.flatten().to_numpy().copy()
            values[0] += 1.0
            t = t.set_column(t.schema.get_field_index("mlp_out"), "mlp_out", vectors(values, lm.dims.d_model))
        return t

    monkeypatch.setattr(capture, "read", tampered)
    with pytest.raises(StoreMismatchError, match="do not add up"):
        stored_end_vectors(capture, N, 0, lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_model)


def test_summaries_agree_with_the_per_prompt_rows(analysed):
    root, _, _ = analysed
    con = connect(root)
    worst = _one(con, """
        SELECT max(abs(h.mean_beta - b.m)) FROM regression_heads h
        JOIN (SELECT layer, head, avg(beta) AS m FROM regression_betas WHERE NOT isnan(beta) GROUP BY ALL) b
        USING (layer, head)""")[0]
    assert worst < 1e-9
    best, push = _one(con, "SELECT best_layer, push FROM function_application")
    layers = con.sql("SELECT layer, push, best_layer FROM regression_layers ORDER BY layer").fetchall()
    top = max((r for r in layers if r[1] is not None), key=lambda r: r[1])
    assert top[0] == best and top[2] and sum(r[2] for r in layers) == 1
    assert push == pytest.approx(top[1])
    n, success = _one(con, "SELECT swap_n, swap_success FROM function_application")
    direct = _one(con, "SELECT count(*), avg(success::INTEGER) FROM argument_swap WHERE eligible")
    assert n == direct[0] and success == pytest.approx(direct[1])


def test_queries_answer_the_issue_questions_and_rerun_is_skipped(analysed):
    root, lm, _ = analysed
    for name in ("mlp_head_effects", "answer_layer", "mechanism_claims"):
        out = run_query(root, named_query(name), fmt="csv")
        assert out.count("\n") >= 2, name
    again = run_stage(root, "mlp", lm, get_relation("paper.capital"), 0,
                      MlpConfig(max_prompts=N, n_boot=50, batch_size=7), "t2")
    assert again.status == "skipped"
    plots = dict(connect(root).sql("SELECT name, png FROM plots WHERE stage = 'mlp'").fetchall())
    assert set(plots) == {"beta_by_head", "r2_by_layer", "push_by_layer"}
    assert all(png[:4] == b"\x89PNG" for png in plots.values())
    # a random model never ranks the answer first, so no prompt is eligible for the swap: no plot
    view = open_store(root)
    assert view.sql("SELECT swap_n, swap_success FROM function_application").fetchall() == [(0, None)]
    assert model_swap_plot(view.con, lm.model_id) is None
    import duckdb  # the per-model plot over swap rates, drawn from a hand-made function_application table

    con = duckdb.connect()
    con.execute("""CREATE TABLE function_application AS SELECT * FROM (VALUES
        ('m', 'r1', 0, 0.5, 0.3, 0.7), ('m', 'r2', 0, 0.2, 0.1, 0.4), ('m', 'r1', 1, 0.6, 0.4, 0.8))
        AS t(model, relation, shot, swap_success, swap_success_lo, swap_success_hi)""")
    assert model_swap_plot(con, "m")[:4] == b"\x89PNG"
    assert model_swap_plot(con, "no-such-model") is None


@pytest.mark.integration
def test_smollm2_task_component_pushes_the_answer_over_other_capitals(smollm2, smollm2_heads):
    root, heads = smollm2_heads
    summary = run_stage(root, "mlp", smollm2, get_relation("paper.capital"), 0,
                        MlpConfig(max_prompts=60, n_boot=100), "t").summary
    con = connect(root)
    assert list(_one(con, "SELECT head_set FROM function_application")[0]) == heads["head_set"]
    best, push, lo, hi, n = _one(con, "SELECT best_layer, push, push_lo, push_hi, push_n FROM function_application")
    print(f"\nsmollm2 paper.capital shot 0: best layer {best}, push {push:.3f} [{lo:.3f}, {hi:.3f}] over n = {n}")
    assert n >= 50 and summary["best_layer"] == best
    assert lo > 0  # the component favours the right capital over the other 14, beyond sampling noise


def test_mechanism_claims_pool_the_rows(analysed):
    root, _, _ = analysed
    con = connect(root)
    row = con.sql(named_query("mechanism_claims")).pl().row(0, named=True)
    medians = [r[0] for r in con.sql("SELECT median_r2 FROM regression_layers WHERE holds_head_set_head").fetchall()]
    assert row["n_head_layer_mlps"] == len(medians)
    assert row["share_head_layer_mlps_r2_ge_half"] == pytest.approx(sum(m >= 0.5 for m in medians) / len(medians))
    labels = [r[0] for r in con.sql("SELECT label FROM regression_heads WHERE in_head_set").fetchall()]
    assert row["share_amplified"] == pytest.approx(labels.count("amplified") / len(labels))
    n, success = _one(con, "SELECT count(*), avg(success::INTEGER) FROM argument_swap WHERE eligible")
    assert row["n_swap"] == n and row["swap_success"] == pytest.approx(success)


def test_swap_outcomes_count_only_prompts_where_the_swap_can_succeed():
    from factrecall.tasks.mlp_stage import swap_outcomes

    answer = np.array([10, 10, 10, 10, 10])
    swap = {"top1_before": np.array([10, 20, 10, 10, 30]),  # prompt 1: X''s object already top-1 before
            "swap_token": np.array([20, 20, 20, 10, 20]),   # prompt 3: X' has the same answer
            "top1_after": np.array([20, 20, 10, 10, 20]),
            "top1_random": np.array([10, 20, 20, 10, 20])}
    o = swap_outcomes(swap, answer)
    assert o["eligible"].tolist() == [True, False, True, False, False]
    assert o["success"].tolist() == [True, False, False, False, False]  # prompt 1's "success" was there before
    assert o["chance"].tolist() == [False, False, True, False, False]
    assert o["was_top1"].tolist() == [True, False, True, True, False]
    assert o["stayed"].tolist() == [False, False, True, True, False]  # only over prompts whose answer was top-1
