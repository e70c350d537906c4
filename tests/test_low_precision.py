"""bfloat16 end to end: a model read in bfloat16 goes through every stage to the claims, its consistency checks
held to the stated lower-precision tolerances (METHOD.md §9), while a float32 model keeps the float32 ones."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from factrecall.flows.runner import run_stage
from factrecall.storage.query import connect
from factrecall.tasks.claims import CLAIMS
from factrecall.tasks.claims_stage import ClaimsConfig
from factrecall.tasks.ledger import ledger_rtol
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model

CONFIG = ClaimsConfig(max_prompts=12, n_boot=50, batch_size=6, control_prompts=2)


def _bf16(family: str):
    lm = loaded_tiny_model(family)
    model = copy.deepcopy(lm.model).to(torch.bfloat16)
    return dataclasses.replace(lm, model=model, model_id=f"tiny-{family}.bf16", dtype=torch.bfloat16)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_a_bfloat16_model_reaches_the_claims(family, tmp_path):
    lm = _bf16(family)
    outcome = run_stage(tmp_path / "store", "claims", lm, get_relation("paper.capital"), 1, CONFIG, "t")
    assert outcome.status == "written", outcome
    con = connect(tmp_path / "store")
    stages = dict(con.execute("SELECT stage, count(*) FROM results WHERE status = 'current' GROUP BY stage").fetchall())
    assert stages == {"capture": 1, "heads": 1, "mlp": 1, "final_layer": 1, "claims": 1}
    claims = con.sql("SELECT claim, verdict FROM claims").fetchall()
    assert sorted(c for c, _ in claims) == sorted(c.name for c in CLAIMS)
    dtype = con.execute("SELECT DISTINCT dtype FROM model_info").fetchall()
    assert dtype == [("bfloat16",)]
    worst = con.execute("SELECT max(abs(dla_sum - model_logit) / greatest(1, abs(model_logit))) FROM ledger").fetchone()[0]
    assert np.isfinite(worst) and worst <= ledger_rtol(torch.bfloat16)


def test_the_float32_unembedding_of_a_bfloat16_model_is_made_once_and_follows_edits():
    """Stages ask for W_U in float32 per batch and per mitigation row: a bfloat16 model's copy is made once
    (the same tensor comes back) and remade after an in-place edit of the weight; a float32 model's W_U is its
    own weight (no copy at all)."""
    from factrecall.tasks.readout import unembedding

    lm32 = loaded_tiny_model("qwen2")
    w32, _ = unembedding(lm32)
    assert w32.data_ptr() == lm32.model.get_output_embeddings().weight.data_ptr()
    lm = _bf16("qwen2")
    head = lm.model.get_output_embeddings()
    first, _ = unembedding(lm)
    assert first.dtype == torch.float32 and unembedding(lm)[0] is first
    torch.testing.assert_close(first, head.weight.float(), atol=0, rtol=0)
    with torch.no_grad():
        head.weight.mul_(2)
    again, _ = unembedding(lm)
    assert again is not first
    torch.testing.assert_close(again, head.weight.float(), atol=0, rtol=0)
