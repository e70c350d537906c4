"""Captured partitions in a real store: the SQL view's DLA equals the Python ledger's DLA, the
ledger rows add up, and a rerun never duplicates rows."""

from __future__ import annotations

import numpy as np
import pytest

from factrecall.flows.runner import run_stage
from factrecall.storage.query import connect
from factrecall.storage.store import Store
from factrecall.tasks.capture_stage import CaptureConfig
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model

N = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two families with different norm conventions (LayerNorm + learned positions; RMSNorm with 1 + w)."""
    root = tmp_path_factory.mktemp("store")
    st = Store(root)
    for family in ("gpt2", "gemma3"):
        lm = loaded_tiny_model(family)
        for shot in (0, 1):
            run_stage(st, "capture", lm, get_relation("paper.capital"), shot, CaptureConfig(max_prompts=N, batch_size=5), "t")
    return root


def test_sql_head_dla_equals_python_dla(store):
    con = connect(store)
    joined = con.sql(
        """
        SELECT h.model, h.shot, h.prompt_id, h.layer, h.head, h.dla AS sql_dla, d.value AS python_dla
        FROM head_dla_answer h
        JOIN dla d ON d.model = h.model AND d.relation = h.relation AND d.shot = h.shot
          AND d.prompt_id = h.prompt_id AND d.variant = h.variant AND d.token_role = 'answer'
          AND d.layer = h.layer AND d.head = h.head
        """
    ).pl()
    n_heads = {"tiny-gpt2": 3 * 4, "tiny-gemma3": 3 * 4}
    assert joined.height == sum(n_heads.values()) * N * 2
    np.testing.assert_allclose(joined["sql_dla"].to_numpy(), joined["python_dla"].to_numpy(), rtol=1e-4, atol=1e-5)
    assert joined["python_dla"].abs().max() > 1e-3  # the comparison is not between zeros


def test_dla_rows_sum_to_the_model_logit(store):
    con = connect(store)
    sums = con.sql(
        """
        SELECT d.model, d.shot, d.prompt_id, d.token_role, sum(d.value) AS total, any_value(l.model_logit) AS logit
        FROM dla d JOIN ledger l USING (model, relation, shot, prompt_id, variant, token_role)
        GROUP BY ALL
        """
    ).pl()
    assert sums.height == 2 * 2 * N * 3
    err = (sums["total"] - sums["logit"]).abs()
    tol = 1e-3 * np.maximum(1.0, sums["logit"].abs().to_numpy())
    assert (err.to_numpy() <= tol).all()


def test_logits_table_matches_prompts_and_answer(store):
    con = connect(store)
    rows = con.sql(
        """
        SELECT p.object, p.answer_token, l.answer_rank, l.top1, l.topk_ids[1] AS top1_id, p.answer_token_id
        FROM prompts p JOIN logits l USING (model, relation, shot, prompt_id, variant)
        """
    ).pl()
    assert rows.height == 2 * 2 * N
    assert ((rows["answer_rank"] == 0) == rows["top1"]).all()
    assert ((rows["top1_id"] == rows["answer_token_id"]) == rows["top1"]).all()
    for obj, tok in zip(rows["object"], rows["answer_token"]):
        assert tok.strip() and obj.startswith(tok.strip())  # the answer token begins the object


def test_rerun_with_force_adds_a_result_and_shows_one(tmp_path):
    st = Store(tmp_path)
    lm = loaded_tiny_model("llama")
    rel = get_relation("paper.capital")
    first = run_stage(st, "capture", lm, rel, 0, CaptureConfig(max_prompts=6), "a")
    again = run_stage(st, "capture", lm, rel, 0, CaptureConfig(max_prompts=6), "b")
    forced = run_stage(st, "capture", lm, rel, 0, CaptureConfig(max_prompts=6), "c", force=True)
    assert (first.status, again.status, forced.status) == ("written", "skipped", "written")
    assert again.result_id == first.result_id != forced.result_id
    con = connect(tmp_path)
    counts = con.sql("SELECT count(*) AS n, count(DISTINCT prompt_id) AS k, any_value(result_id) FROM logits").fetchall()[0]
    assert counts == (6, 6, forced.result_id)  # the default view shows the latest computation only
    assert con.sql("SELECT count(*) FROM stored.logits").fetchall()[0][0] == 12  # both stay stored
    assert con.sql("SELECT count(*) FROM heads").fetchall()[0][0] == 6 * 3 * 4
    other = run_stage(st, "capture", lm, rel, 0, CaptureConfig(max_prompts=6, seed=1), "d")
    assert other.status == "written"
    hashes = dict(connect(tmp_path).sql("SELECT result_id, input_hash FROM results").fetchall())
    assert hashes[other.result_id] != hashes[first.result_id] == hashes[forced.result_id]
