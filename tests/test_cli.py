"""The `factrecall` command: queries in every format, listings, and bad input rejected up front."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from factrecall.cli import app
from factrecall.flows.runner import run_stage
from factrecall.tasks.capture_stage import CaptureConfig
from factrecall.tasks.relations import get_relation
from tiny_models import loaded_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    lm = loaded_tiny_model("gpt2")
    for shot in (0, 2):
        run_stage(root, "capture", lm, get_relation("paper.capital"), shot, CaptureConfig(max_prompts=15), "t")
    return root


def _logits(store) -> pl.DataFrame:
    """The logits table as Polars reads it from its Delta log (one result per key here)."""
    return pl.scan_delta(str(store / "logits")).collect()


def test_query_csv_matches_the_delta_table(store):
    result = runner.invoke(app, ["query", "--store", str(store), "--format", "csv",
                                 "SELECT shot, avg(p_answer) AS p, count(*) AS n FROM logits GROUP BY shot ORDER BY shot"])
    assert result.exit_code == 0, result.output
    got = pl.read_csv(io.StringIO(result.stdout))
    expected = _logits(store).group_by("shot").agg(pl.col("p_answer").mean().alias("p"), pl.len().alias("n")).sort("shot")
    assert got["n"].to_list() == expected["n"].to_list() == [15, 15]
    assert got["p"].to_list() == pytest.approx(expected["p"].to_list(), rel=1e-6)


def test_named_accuracy_by_shot_in_json(store):
    result = runner.invoke(app, ["query", "--store", str(store), "--named", "accuracy_by_shot", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    frame = _logits(store)
    for row in rows:
        part = frame.filter(pl.col("shot") == row["shot"])
        assert row["n"] == part.height
        assert row["top1_accuracy"] == pytest.approx(part["top1"].mean())
        assert row["mean_p_answer"] == pytest.approx(part["p_answer"].mean(), rel=1e-6)


def test_query_parquet_output(store, tmp_path):
    out = tmp_path / "q.parquet"
    result = runner.invoke(app, ["query", "--store", str(store), "--format", "parquet", "--out", str(out),
                                 "SELECT prompt_id, layer, head, attn_to_s FROM heads WHERE shot = 0"])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).height == 15 * 3 * 4


def test_query_errors_are_one_clear_message(store, tmp_path):
    bad = runner.invoke(app, ["query", "--store", str(store), "SELECT nope FROM logits"])
    assert bad.exit_code == 2 and "nope" in bad.output and "p_answer" in bad.output  # the candidate columns
    assert bad.output.count("\n") == 1  # one line
    missing = runner.invoke(app, ["query", "--store", str(tmp_path / "absent"), "SELECT 1"])
    assert missing.exit_code == 2 and "no store" in missing.output and "factrecall capture" in missing.output
    both = runner.invoke(app, ["query", "--store", str(store)])
    assert both.exit_code == 2 and "--named" in both.output


def test_query_list_names_views_and_named_queries():
    result = runner.invoke(app, ["query", "--list"])
    assert result.exit_code == 0
    for name in ("head_dla_answer", "logits", "accuracy_by_shot", "ledger_check"):
        assert name in result.output


def test_relations_lists_every_builtin_relation_with_counts():
    result = runner.invoke(app, ["relations", "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(io.StringIO(result.stdout))
    capital = frame.filter(pl.col("name") == "paper.capital").row(0, named=True)
    assert (capital["n_facts"], capital["n_templates"], capital["n_prompts"]) == (15, 15, 225)
    assert set(frame["source"]) >= {"paper", "lre", "pararel", "rome"}


def test_models_lists_packaged_models_and_families():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("smollm2-135m", "gemma3-270m", "gpt2", "opt", "llama", "gemma3"):
        assert name in result.output


def test_run_rejects_a_bad_relation_file_before_writing(tmp_path):
    bad = tmp_path / "facts.jsonl"
    bad.write_text('{"subject": "France", "object": "Paris", "template": "The capital of {} is"}\n'
                   '{"subject": "Spain", "object": "Madrid", "template": "no slot here"}\n')
    store = tmp_path / "store"
    result = runner.invoke(app, ["capture", "--relations", str(bad), "--store", str(store)])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output.replace("\n", "")
    assert not store.exists()


def test_run_rejects_an_unknown_model_and_bad_shots(tmp_path):
    result = runner.invoke(app, ["capture", "--models", "no-such-model", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    text = result.output.replace("\n", " ")
    assert "smollm2-135m" in text and "local" in text
    shots = runner.invoke(app, ["capture", "--shots", "0,x", "--store", str(tmp_path / "s")])
    assert shots.exit_code == 2 and "shots" in shots.output
    assert not (tmp_path / "s").exists()


def test_stage_commands_offer_every_config_field_of_their_stage():
    import dataclasses

    from factrecall.stages import STAGES

    for stage in STAGES.values():
        result = runner.invoke(app, [stage.command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        for f in dataclasses.fields(stage.config):
            option = "--" + f.name.replace("_", "-")
            assert (option in result.output) == f.metadata.get("cli", True), (stage.name, option)
        assert stage.help.split(":")[0] in result.output


def test_relation_files_show_the_name_they_are_stored_under(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"subject": "France", "object": "Paris", "template": "The capital of {} is"}\n')
    name = get_relation(str(path)).name
    result = runner.invoke(app, ["relations", str(path), "--source", "user", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert pl.read_csv(io.StringIO(result.stdout))["name"].to_list() == [name]


def test_query_as_of_an_earlier_run(tmp_path):
    from factrecall.flows.sweep import sweep

    lm_dir = __import__("tiny_models").save_tiny_model_dir("gpt2", tmp_path / "m" / "tiny")
    first = sweep("capture", [lm_dir], ["paper.capital"], [0], str(tmp_path / "s"), {"max_prompts": 4},
                  show_progress=False)
    sweep("capture", [lm_dir], ["paper.capital"], [0], str(tmp_path / "s"), {"max_prompts": 6}, show_progress=False)
    sql = "SELECT count(*) AS n FROM logits"
    now = runner.invoke(app, ["query", "--store", str(tmp_path / "s"), "--format", "csv", sql])
    then = runner.invoke(app, ["query", "--store", str(tmp_path / "s"), "--format", "csv", "--as-of", first["run_id"], sql])
    assert now.stdout.split() == ["n", "6"] and then.stdout.split() == ["n", "4"]
    bad = runner.invoke(app, ["query", "--store", str(tmp_path / "s"), "--as-of", "nope", sql])
    assert bad.exit_code == 2 and "no such run" in bad.output and first["run_id"] in bad.output


def test_a_named_query_parameter_that_matches_nothing_says_what_exists(store):
    sql = "SELECT * FROM logits WHERE model = $model AND relation = $relation"
    result = runner.invoke(app, ["query", "--store", str(store), sql,
                                 "--param", "model=no-such-model", "--param", "relation=paper.capital"])
    assert result.exit_code == 2
    assert "model=no-such-model matches nothing" in result.output and "tiny-gpt2" in result.output
    found = runner.invoke(app, ["query", "--store", str(store), "--format", "csv", sql,
                                "--param", "model=tiny-gpt2", "--param", "relation=paper.capital"])
    assert found.exit_code == 0 and found.stdout.count("\n") == 1 + 2 * 15


def test_no_progress_silences_the_gguf_dequantisation_bar(capfd):
    """transformers dequantises GGUF weights under a plain tqdm bar that its own switch does not reach."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from factrecall.cli import _quiet_libraries

    original = gguf_utils.tqdm
    gguf_utils.tqdm = getattr(original, "func", original)  # as in a new process: an earlier in-process --no-progress
    try:                                                   # command of this test session has silenced it already
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        assert "de-quantizing" in capfd.readouterr().err  # the bar prints by default
        _quiet_libraries(progress=False)
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        assert capfd.readouterr().err == ""
    finally:
        gguf_utils.tqdm = original
