"""The final-layer stage end to end (no Prefect) on a tiny model, and on smollm2-135m the measured
last-layer change with its interval."""

from __future__ import annotations

import pytest

from factrecall.flows.runner import run_stage
from factrecall.storage.query import connect, named_query, run_query
from factrecall.tasks.final_layer_stage import MITIGATION_ROWS, VARIANTS, FinalLayerConfig
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model

N = 12
CONFIG = FinalLayerConfig(max_prompts=N, n_boot=50, batch_size=5, control_prompts=2)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("final")
    lm = loaded_tiny_model("llama")
    outcome = run_stage(root, "final_layer", lm, get_relation("paper.capital"), 1, CONFIG, "t")
    return root, lm, outcome.summary


def _one(con, sql):
    return con.sql(sql).fetchall()[0]


def test_tables_cover_every_prompt_layer_and_component(analysed):
    root, lm, _ = analysed
    L, H = lm.dims.n_layers, lm.dims.n_heads
    con = connect(root)
    assert _one(con, "SELECT count(*), min(layer), max(layer) FROM lens") == (N * (L + 1), -1, L - 1)
    assert _one(con, "SELECT count(*), count(DISTINCT component) FROM final_components") == (N * (H + 2), H + 2)
    assert _one(con, "SELECT count(*) FROM mitigation")[0] == len(MITIGATION_ROWS) == 2 * len(VARIANTS) - 1
    assert _one(con, "SELECT count(*) FROM mitigation_prompts")[0] == N * len(MITIGATION_ROWS)


def test_lens_at_the_last_layer_is_the_captured_model_output(analysed):
    root, lm, _ = analysed
    con = connect(root)
    worst, n = _one(con, f"""
        SELECT max(abs(l.p_answer - g.p_answer)), count(*) FROM lens l
        JOIN logits g ON g.model = l.model AND g.relation = l.relation AND g.shot = l.shot
         AND g.prompt_id = l.prompt_id AND g.variant = 'clean'
        WHERE l.layer = {lm.dims.n_layers - 1}""")
    assert n == N and worst < 1e-5


def test_summary_deltas_are_the_lens_differences_and_the_verdict_follows_the_interval(analysed):
    root, lm, summary = analysed
    last = lm.dims.n_layers - 1
    con = connect(root)
    direct = _one(con, f"""
        SELECT avg(a.p_answer - b.p_answer), avg((a.p_answer < b.p_answer)::INTEGER)
        FROM lens a JOIN lens b USING (model, relation, shot, prompt_id)
        WHERE a.layer = {last} AND b.layer = {last - 1}""")
    delta_p, lo, hi, share, verdict, claim = _one(
        con, "SELECT delta_p, delta_p_lo, delta_p_hi, share_dropped, verdict, claim_holds FROM final_layer_summary")
    assert delta_p == pytest.approx(direct[0], abs=1e-6) and share == pytest.approx(direct[1])
    assert lo <= delta_p <= hi
    assert claim == (hi < 0)
    assert verdict == ("suppresses" if hi < 0 else "raises" if lo > 0 else "inconclusive")
    assert summary["verdict"] == verdict


def test_split_is_disjoint_and_the_same_in_every_table(analysed):
    root, _, _ = analysed
    con = connect(root)
    n_cal, n_held = _one(con, "SELECT n_calibration, n_held_out FROM mitigation WHERE variant = 'heads'")
    assert n_cal + n_held == N and n_cal > 0 and n_held > 0
    both = _one(con, "SELECT count(*) FROM (SELECT prompt_id FROM mitigation_prompts GROUP BY prompt_id "
                     "HAVING count(DISTINCT split) > 1)")[0]
    assert both == 0
    mismatch = _one(con, """
        SELECT count(*) FROM mitigation_prompts m JOIN final_components c USING (model, relation, shot, prompt_id)
        WHERE m.split <> c.split""")[0]
    assert mismatch == 0


def test_mitigation_rows_agree_with_the_per_prompt_rows_and_the_curve(analysed):
    root, _, _ = analysed
    con = connect(root)
    for variant, choice in MITIGATION_ROWS:
        where = f"variant = '{variant}' AND choice = '{choice}'"
        alpha, p_before, p_after, delta_p, note = _one(
            con, f"SELECT alpha, p_before, p_after, delta_p, note FROM mitigation WHERE {where}")
        per_prompt = _one(con, f"""SELECT avg(p_before), avg(p_after) FROM mitigation_prompts
                                   WHERE {where} AND split = 'held_out'""")
        assert per_prompt == pytest.approx((p_before, p_after), abs=1e-6)
        assert delta_p == pytest.approx(p_after - p_before, abs=1e-9)
        curve = _one(con, f"""SELECT mean_p FROM mitigation_curve
                              WHERE variant = '{variant}' AND split = 'held_out' AND alpha = {alpha}""")[0]
        assert curve == pytest.approx(p_after, abs=1e-9)
        # alpha = 1 is "no change" for every variant
        unchanged = _one(con, f"""SELECT mean_p FROM mitigation_curve
                                  WHERE variant = '{variant}' AND split = 'held_out' AND alpha = 1.0""")[0]
        assert unchanged == pytest.approx(p_before, abs=1e-9)
        # a variant with nothing to scale keeps alpha = 1 and has no other alpha on its curve
        components, n_alphas = _one(con, f"""SELECT m.components, (SELECT count(DISTINCT alpha) FROM mitigation_curve
                                             WHERE variant = '{variant}') FROM mitigation m WHERE {where}""")
        assert n_alphas == (len(CONFIG.alphas) if components else 1)
        if not components:
            assert alpha == 1.0 and delta_p == 0.0
        if alpha == 1.0:  # every no-op row says why
            assert note and ("nothing to scale" in note or "alpha = 1" in note)


def test_controls_and_plots_are_recorded(analysed):
    root, _, _ = analysed
    con = connect(root)
    rows = con.sql("SELECT variant, oracle, control_relations, n_control, n_text_tokens, text_delta_logp, note, "
                   "choice, text_cost_bound, calibration_text_delta_logp FROM mitigation ORDER BY variant").fetchall()
    for variant, oracle, controls, n_control, n_text, text_delta, note, choice, bound, cal_text in rows:
        assert "paper.capital" not in controls and len(controls) == len(CONFIG.control_relations) - 1
        assert n_control == 2 * len(controls) and n_text > 100
        assert (text_delta is None) == oracle
        if oracle:
            assert "oracle" in note and "not an upper bound" in note and choice == "unconstrained"
        if choice == "cost_bounded":  # the bound holds where it was chosen (the calibration passages)
            assert bound == CONFIG.text_cost_bound and cal_text >= -bound
    plots = dict(con.sql("SELECT name, png FROM plots WHERE stage = 'final_layer'").fetchall())
    assert set(plots) == {"lens_by_layer", "final_layer_dla", "mitigation"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in plots.values())


def test_named_queries_answer_the_issue_questions(analysed):
    root, _, _ = analysed
    for name in ("final_layer_suppression", "final_layer_components", "mitigation_gain",
                 "anti_overconfidence_by_model", "lens_by_layer"):
        out = run_query(root, named_query(name), fmt="csv")
        assert out.count("\n") >= 2, name  # header and at least one row


def test_rerun_with_another_batch_size_is_skipped(analysed):
    root, lm, _ = analysed
    again = run_stage(root, "final_layer", lm, get_relation("paper.capital"), 1,
                      FinalLayerConfig(max_prompts=N, n_boot=50, batch_size=7, control_prompts=2), "t2")
    assert again.status == "skipped"
    assert _one(connect(root), "SELECT count(*) FROM final_layer_summary")[0] == 1


@pytest.mark.integration
def test_smollm2_last_layer_change_is_reported_with_its_interval(smollm2, tmp_path):
    """The paper's claim is measured, whichever sign it has: n, the interval and the verdict."""
    summary = run_stage(tmp_path, "final_layer", smollm2, get_relation("paper.capital"), 0,
                        FinalLayerConfig(max_prompts=60, n_boot=500), "t").summary
    con = connect(tmp_path)
    n, delta_p, lo, hi, verdict, suppressors = _one(
        con, "SELECT n, delta_p, delta_p_lo, delta_p_hi, verdict, suppressors FROM final_layer_summary")
    assert n == 60
    assert lo is not None and hi is not None and lo < delta_p < hi and hi - lo < 0.5
    assert verdict == summary["verdict"]
    mit = con.sql("SELECT variant, n_held_out, delta_p_lo, delta_p_hi FROM mitigation").fetchall()
    assert all(r[1] == 30 and r[2] is not None and r[2] <= r[3] for r in mit)
    print(f"\nsmollm2 paper.capital shot 0: Δp across the last layer {delta_p:+.4f} [{lo:+.4f}, {hi:+.4f}], "
          f"verdict {verdict}, suppressors {suppressors[:4]}")


def test_per_model_query_pools_prompts(analysed):
    root, lm, _ = analysed
    con = connect(root)
    row = con.sql(named_query("anti_overconfidence_by_model")).pl().row(0, named=True)
    last = lm.dims.n_layers - 1
    dp = [r[0] for r in con.sql(f"""
        SELECT a.p_answer - b.p_answer FROM lens a JOIN lens b USING (model, relation, shot, prompt_id)
        WHERE a.layer = {last} AND b.layer = {last - 1}""").fetchall()]
    assert row["n_prompts"] == N and row["delta_p"] == pytest.approx(sum(dp) / N)
    assert row["delta_p_lo"] <= row["delta_p"] <= row["delta_p_hi"]
    gains = [r[0] for r in con.sql("SELECT p_after - p_before FROM mitigation_prompts "
                                   "WHERE variant = 'heads' AND choice = 'cost_bounded' AND split = 'held_out'").fetchall()]
    assert row["gain_heads"] == pytest.approx(sum(gains) / len(gains))
    assert row["n_partitions"] == 1 and row["n_suppresses"] + row["n_raises"] + row["n_inconclusive"] == 1
