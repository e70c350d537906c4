"""Domains in SQL: the relations record, the domain column of every view, and the domain roll-ups of the
named queries, checked against the same aggregates computed by hand from the rows."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from factrecall.flows.runner import run_stage
from factrecall.flows.sweep import relation_records
from factrecall.storage.query import connect, named_query
from factrecall.storage.store import Store
from factrecall.tasks.capture_stage import CaptureConfig
from factrecall.tasks.relations import RelationError, get_relation, load_generic_jsonl
from tiny_models import loaded_tiny_model

RELATIONS = ("paper.capital", "lre.country_language", "lre.adj_antonym")  # factual, factual, linguistic


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    lm = loaded_tiny_model("gpt2")
    rels = [get_relation(r) for r in RELATIONS]
    for rel in rels:
        for shot in (0, 1):
            run_stage(root, "capture", lm, rel, shot, CaptureConfig(max_prompts=6 + 3 * shot), "t")
    s = Store(root)
    with s.writing():
        s.append_records("relations", relation_records("t", rels))
    return root


def test_every_view_carries_the_recorded_domain(store):
    con = connect(store)
    got = dict(con.execute("SELECT DISTINCT relation, domain FROM logits").fetchall())
    assert got == {"paper.capital": "factual", "lre.country_language": "factual", "lre.adj_antonym": "linguistic"}
    rel = con.sql("SELECT * FROM relations WHERE relation = 'lre.adj_antonym'").pl().row(0, named=True)
    antonym = get_relation("lre.adj_antonym")
    assert rel["n_facts"] == len(antonym.facts) and rel["content_hash"] == antonym.content_hash()
    assert rel["source"] == "lre"


def test_accuracy_by_domain_equals_the_aggregate_by_hand(store):
    con = connect(store)
    got = con.sql(named_query("accuracy_by_domain")).pl()
    rows = con.sql("SELECT model, relation, shot, p_answer, top1 FROM logits WHERE variant = 'clean'").pl()
    domain = {"paper.capital": "factual", "lre.country_language": "factual", "lre.adj_antonym": "linguistic"}
    rows = rows.with_columns(pl.col("relation").replace_strict(domain).alias("domain"))
    for (d, shot), part in [*rows.group_by(["domain", "shot"]),
                            *[(("all", s), g) for (s,), g in rows.group_by(["shot"])]]:
        row = got.filter((pl.col("domain") == d) & (pl.col("shot") == shot)).row(0, named=True)
        p = part["p_answer"].to_numpy().astype(float)
        assert row["n"] == len(p) == part.height
        assert row["n_relations"] == part["relation"].n_unique()
        assert row["mean_p_answer"] == pytest.approx(p.mean(), rel=1e-6)
        assert row["mean_p_answer_hi"] - row["mean_p_answer"] == pytest.approx(1.96 * p.std(ddof=1) / np.sqrt(len(p)),
                                                                               rel=1e-5)
        assert row["top1_accuracy"] == pytest.approx(part["top1"].cast(pl.Float64).mean())
    assert set(got["domain"]) == {"factual", "linguistic", "all"} and got.height == 6


def test_reserved_domain_names_are_refused(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"subject": "France", "object": "Paris", "template": "The capital of {} is",
                                "domain": "all"}) + "\n")
    with pytest.raises(RelationError, match="reserved"):
        load_generic_jsonl(path)


def test_a_relation_file_gets_its_domain_from_its_lines_or_the_command(tmp_path):
    lines = [{"subject": "France", "object": "Paris", "template": "The capital of {} is"},
             {"subject": "Peru", "object": "Lima", "template": "The capital of {} is"}]
    plain = tmp_path / "facts.jsonl"
    plain.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert load_generic_jsonl(plain).domain == "unspecified"
    given = get_relation(str(plain), "geography")
    assert given.domain == "geography" and given.name != load_generic_jsonl(plain).name  # the domain is an input
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps(x | {"domain": "factual"}) + "\n" for x in lines))
    assert get_relation(str(named), "factual").domain == "factual"
    with pytest.raises(RelationError, match="lines say domain 'factual' but 'bias' was given"):
        get_relation(str(named), "bias")
    with pytest.raises(RelationError, match="in domain 'factual', not 'bias'"):
        get_relation("paper.capital", "bias")
    with pytest.raises(RelationError, match="reserved"):
        get_relation(str(plain), "all")


def test_the_domain_option_and_a_spec_give_a_file_its_domain(tmp_path):
    from typer.testing import CliRunner

    from factrecall.cli import app
    from factrecall.tasks.reproduction import load_spec

    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"subject": "France", "object": "Paris", "template": "The capital of {} is"}) + "\n")
    listed = CliRunner().invoke(app, ["relations", str(path), "--format", "csv"])
    assert listed.exit_code == 0 and ",unspecified," in listed.stdout
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nmodels = ["smollm2-135m"]\nshots = [0]\n[[relations]]\nname = "{path}"\n'
                    'domain = "geography"\n')
    loaded = load_spec(spec)
    assert loaded.file_domains == {str(path): "geography"} and list(loaded.domains.values()) == ["geography"]
