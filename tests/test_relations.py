"""Relations: the paper task, the packaged sources with their repairs, the registry, user files.

Expected values come from METHOD.md §1 (copied below by hand) or from re-reading the raw files here.
"""

import dataclasses
import importlib.resources
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from factrecall.tasks.relations import (Fact, Relation, RelationError, get_relation, list_relations,
                                        load_generic_jsonl, load_lre, load_pararel, load_rome,
                                        paper_capital, paper_capital_possessive)

DATA = Path(str(importlib.resources.files("factrecall.data")))

# METHOD.md §1, verbatim lists.
METHOD_NATIONS = "China, USA, Russia, England, France, Japan, Italy, Canada, Australia, Spain, Egypt, " \
                 "Portugal, Austria, Greece, Thailand".split(", ")
METHOD_CAPITALS = "Beijing, Washington, Moscow, London, Paris, Tokyo, Rome, Ottawa, Canberra, Madrid, " \
                  "Cairo, Lisbon, Vienna, Athens, Bangkok".split(", ")
METHOD_PREFIXES = ['It\'s crucial to know that', 'You are right to say that',
                   'Therefore, it\'s correct to state that', 'When asked, always remember that',
                   'We confirm that', 'Don\'t forget,', 'Bear in mind,', 'Keep in mind,', 'Just a reminder,',
                   'As we all know,', 'According to the textbook,', 'I am sure that', 'Without a doubt,',
                   'In case you didn\'t know,', 'To emphasize,']


def fill(t, s):
    return t.replace("{}", s)


# ------------------------------------------------------------------------------------------ paper

def test_paper_capital_matches_method():
    r = paper_capital()
    assert r.name == "paper.capital" and r.source == "paper" and r.n_prompts == 225
    assert len(set(r.templates)) == 15
    assert [f.subject for f in r.facts] == METHOD_NATIONS
    assert {f.subject: f.object for f in r.facts}["USA"] == "Washington"
    assert [f.object for f in r.facts] == METHOD_CAPITALS
    assert sorted(r.cases) == sorted((f, t) for f in range(15) for t in range(15))
    assert fill(r.templates[0], "France") == "It's crucial to know that, the capital of France is"
    for prefix, t in zip(METHOD_PREFIXES, r.templates):
        assert t.count("{}") == 1 and ",," not in t
        assert t.startswith(prefix.rstrip(",") + ", the capital of ")
    assert "Don't forget, the capital of {} is" in r.templates
    assert r.demo_template == "The capital of {} is" and r.relation_word == "capital"


def test_paper_possessive():
    r = paper_capital_possessive()
    assert r.templates == ("{}'s capital is",) and r.n_prompts == 15
    assert {f.subject: f.object for f in r.facts} == dict(zip(METHOD_NATIONS, METHOD_CAPITALS))


# -------------------------------------------------------------------------------------------- LRE

def test_lre_unicode_decoded():
    r = get_relation("lre.country_capital_city")
    objects = {f.subject: f.object for f in r.facts}
    assert objects["Brazil"] == "Brasília" and objects["Colombia"] == "Bogotá"
    assert any("unicode" in note for note in r.repairs)
    assert r.templates == tuple(json.loads((DATA / "lre-relations/factual/country_capital_city.json")
                                           .read_text())["prompt_templates"])


def test_lre_reversed_pair_dropped():
    raw = json.loads((DATA / "lre-relations/factual/city_in_country.json").read_text())["samples"]
    r = load_lre("lre-relations/factual/city_in_country.json")
    assert {"subject": "Costa Rica", "object": "San José"} in raw
    assert all(f.subject != "Costa Rica" for f in r.facts)
    assert len(r.facts) == len(raw) - 1
    assert r.source_file == "lre-relations/factual/city_in_country.json"
    assert any("Costa Rica" in note for note in r.repairs)


def test_lre_absolute_path_and_whitespace(tmp_path):
    src = json.loads((DATA / "lre-relations/factual/presidents_birth_year.json").read_text())
    raw_subjects = [s["subject"] for s in src["samples"]]
    assert "Jimmy Carter " in raw_subjects  # the upstream quirk this test is about
    r = load_lre(DATA / "lre-relations/factual/presidents_birth_year.json")
    assert all(f.subject == f.subject.strip() and f.object == f.object.strip() for f in r.facts)
    assert len(set(r.facts)) == len(r.facts)
    assert Fact("Jimmy Carter", "1924") in r.facts


def test_no_backslash_escapes_left_anywhere():
    df = list_relations()
    for name in df["name"]:
        r = get_relation(name)
        for f in r.facts:
            assert "\\u" not in f.subject and "\\u" not in f.object, (name, f)
            assert f.subject and f.object and f.subject == f.subject.strip()
        assert len(set(r.facts)) == len(r.facts), name
        for t in r.templates:
            assert t.count("{}") == 1 and t == t.rstrip(), (name, t)


# ---------------------------------------------------------------------------------------- ParaRel

def _raw_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pararel_templates():
    pats = _raw_jsonl(DATA / "pararel/pattern_data/graphs_json/P36.jsonl")
    ending = [p["pattern"] for p in pats if re.search(r"\[Y\]\s*\.?\s*$", p["pattern"])]
    r = load_pararel("P36")
    assert r.name == "pararel.P36" and r.source == "pararel" and r.domain == "factual"
    assert "The capital of {} is" in r.templates
    assert all("[X]" not in t and "[Y]" not in t and not t.endswith(".") for t in r.templates)
    assert len(r.templates) <= len(ending) < len(pats)
    assert any(f"skipped {len(pats) - len(ending)} pattern" in note for note in r.repairs)
    assert r.relation_word == "capital"  # lemma of the first pattern, found in the template


def test_pararel_without_patterns_raises():
    assert (DATA / "pararel/trex_lms_vocab/P31.jsonl").exists()
    with pytest.raises(RelationError, match="no pattern"):
        load_pararel("P31")
    with pytest.raises(RelationError, match="no pattern"):
        get_relation("pararel.P527")


def test_pararel_lemma_fallback():
    pats = _raw_jsonl(DATA / "pararel/pattern_data/graphs_json/P138.jsonl")
    first = next(p for p in pats if re.search(r"\[Y\]\s*\.?\s*$", p["pattern"]))
    r = load_pararel("P138")
    assert first["lemma"].replace("-", " ") not in r.templates[0]
    # "{} is named after": longest non-stopword word
    assert r.templates[0] == "{} is named after" and r.relation_word == "named"


# ------------------------------------------------------------------------------------------- ROME

def test_rome_cases_pair_each_record_with_its_template():
    raw = [rec for rec in json.loads((DATA / "rome-known1000/known_1000.json").read_text())
           if rec["relation_id"] == "P36"]
    r = load_rome("P36")
    assert r.name == "rome.P36" and r.n_prompts == len(raw)
    got = sorted(fill(r.templates[t], r.facts[f].subject) + " -> " + r.facts[f].object for f, t in r.cases)
    want = sorted(fill(rec["template"], rec["subject"]) + " -> " + rec["attribute"] for rec in raw)
    assert got == want
    assert len(r.templates) == len({rec["template"] for rec in raw})


# --------------------------------------------------------------------------------------- registry

def _independent_counts():
    """name -> (n_facts, n_templates, n_prompts), re-derived from the raw files."""
    def unescape(s):
        return s.encode("ascii", "backslashreplace").decode("unicode_escape") if "\\u" in s else s

    out = {}
    for f in sorted((DATA / "lre-relations").glob("*/*.json")):
        d = json.loads(f.read_text())
        pairs = {(unescape(s["subject"]).strip(), unescape(s["object"]).strip()) for s in d["samples"]}
        pairs.discard(("Costa Rica", "San José"))
        n_t = len(d["prompt_templates"])
        out[f"lre.{f.stem}"] = (len(pairs), n_t, len(pairs) * n_t)
    for f in sorted((DATA / "pararel/trex_lms_vocab").glob("*.jsonl")):
        pf = DATA / "pararel/pattern_data/graphs_json" / f.name
        if not pf.exists():
            continue
        pairs = {(x["sub_label"], x["obj_label"]) for x in _raw_jsonl(f)}
        temps = set()
        for p in _raw_jsonl(pf):
            m = re.fullmatch(r"(.*)\[Y\]\s*\.?\s*", p["pattern"])
            if m:
                temps.add(" ".join(m.group(1).split()))
        out[f"pararel.{f.stem}"] = (len(pairs), len(temps), len(pairs) * len(temps))
    groups = defaultdict(list)
    for rec in json.loads((DATA / "rome-known1000/known_1000.json").read_text()):
        groups[rec["relation_id"]].append(rec)
    for rid, recs in groups.items():
        out[f"rome.{rid}"] = (len({(r["subject"], r["attribute"]) for r in recs}),
                              len({r["template"] for r in recs}), len(recs))
    out["paper.capital"] = (15, 15, 225)
    out["paper.capital_possessive"] = (15, 1, 15)
    return out


def test_list_relations_matches_raw_files():
    df = list_relations()
    assert df.columns == ["name", "source", "domain", "n_facts", "n_templates", "n_prompts", "n_repairs"]
    want = _independent_counts()
    assert len(list((DATA / "lre-relations").glob("*/*.json"))) == 47
    assert df.filter(df["source"] == "lre").height == 47
    assert df.filter(df["source"] == "pararel").height == len(
        list((DATA / "pararel/pattern_data/graphs_json").glob("P*.jsonl")))
    assert df.filter(df["source"] == "rome").height == 33  # NOTICE.md: 33 Wikidata relations
    got = {row["name"]: (row["n_facts"], row["n_templates"], row["n_prompts"]) for row in df.iter_rows(named=True)}
    assert got == want
    assert df["name"].n_unique() == df.height
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in df["name"])
    domains = dict(zip(df["name"], df["domain"]))
    assert domains["lre.word_sentiment"] == "commonsense" and domains["lre.name_gender"] == "bias"


def test_list_relations_is_fast_cold():
    code = ("import time; from factrecall.tasks.relations import list_relations; t = time.perf_counter(); "
            "list_relations(); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 2.0


def test_get_relation_unknown_lists_close_matches():
    with pytest.raises(RelationError) as e:
        get_relation("lre.country_capital")
    msg = str(e.value)
    assert "lre.country_capital_city" in msg and "factrecall relations" in msg and ".jsonl" in msg


def test_content_hash_stable_and_sensitive():
    r = get_relation("lre.country_capital_city")
    code = ("from factrecall.tasks.relations import get_relation; "
            "print(get_relation('lre.country_capital_city').content_hash())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == r.content_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", r.content_hash())
    changed = dataclasses.replace(r, facts=r.facts[:-1] + (Fact(r.facts[-1].subject, "Sydney"),))
    assert changed.content_hash() != r.content_hash() and changed.data_hash() != r.data_hash()
    # the file's location and the repair notes are not content; the name is (it seeds the demonstrations)
    assert dataclasses.replace(r, source_file="/elsewhere.json", repairs=("x",)).content_hash() == r.content_hash()
    renamed = dataclasses.replace(r, name="lre.other")
    assert renamed.data_hash() == r.data_hash() and renamed.content_hash() != r.content_hash()


def test_user_files_with_the_same_name_get_different_relation_names(tmp_path):
    a, b = tmp_path / "d1" / "facts.jsonl", tmp_path / "d2" / "facts.jsonl"
    for path, capital in ((a, "Paris"), (b, "Lyon")):
        path.parent.mkdir()
        path.write_text(json.dumps({"subject": "France", "object": capital, "template": "The capital of {} is"}) + "\n")
    ra, rb = get_relation(str(a)), get_relation(str(b))
    assert ra.name != rb.name and ra.name.startswith("user.facts-") and rb.name.startswith("user.facts-")
    same = tmp_path / "copy.jsonl"
    same.write_text(a.read_text())
    assert get_relation(str(same)).name == "user.copy-" + ra.name.rsplit("-", 1)[1]  # same facts, same hash


def test_relation_validates_name_and_templates():
    base = dict(source="user", domain="x", facts=(Fact("a", "b"),), cases=((0, 0),), relation_word=None,
                repairs=(), source_file="x")
    with pytest.raises(RelationError, match="name"):
        Relation(name="bad name/x", templates=("{} is",), demo_template="{} is", **base)
    with pytest.raises(RelationError):
        Relation(name="ok", templates=("{} is {}",), demo_template="{} is", **base)


# ------------------------------------------------------------------------------------ user files

def _write(tmp_path, lines, name="facts.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = '{"subject": "France", "object": "Paris", "template": "The capital of {} is"}'


def test_generic_loader_ok(tmp_path):
    p = _write(tmp_path, [GOOD,
                          '{"subject": "Japan", "object": "Tokyo", "template": "{}\'s capital is", "domain": "geo"}',
                          "",
                          '{"subject": "France", "object": "Paris", "template": "{}\'s capital is"}'])
    r = load_generic_jsonl(p)
    assert re.fullmatch(r"user\.facts-[0-9a-f]{8}", r.name) and r.source == "user" and r.domain == "geo"
    assert r.name.endswith(r.data_hash()[:8])
    assert r.facts == (Fact("France", "Paris"), Fact("Japan", "Tokyo"))
    assert r.templates == ("The capital of {} is", "{}'s capital is")
    assert r.cases == ((0, 0), (1, 1), (0, 1))
    assert r.demo_template == "The capital of {} is"
    assert get_relation(str(p)) == r


@pytest.mark.parametrize("bad_line, line_no, needle", [
    ('{"subject": "Spain", "object": "Madrid", "template": "The capital of {} is"', 3, "invalid JSON"),
    ('{"subject": "Spain", "template": "The capital of {} is"}', 3, "missing field 'object'"),
    ('{"subject": "  ", "object": "Madrid", "template": "The capital of {} is"}', 3, "empty subject"),
    ('{"subject": "Spain", "object": "Madrid", "template": "The capital of Spain is"}', 3, "0 '{}'"),
    ('{"subject": "Spain", "object": "Madrid", "template": "{} and {} is"}', 3, "2 '{}'"),
    ('{"subject": "Spain", "object": "Madrid", "template": "The capital of {} is "}', 3, "whitespace"),
    ('{"subject": "Spain", "object": 7, "template": "The capital of {} is"}', 3, "must be a string"),
    ('["Spain", "Madrid"]', 3, "JSON object"),
])
def test_generic_loader_errors(tmp_path, bad_line, line_no, needle):
    p = _write(tmp_path, [GOOD, GOOD.replace("France", "Italy").replace("Paris", "Rome"), bad_line, GOOD])
    with pytest.raises(RelationError) as e:
        load_generic_jsonl(p)
    msg = str(e.value)
    assert f"{p.resolve()}:{line_no}:" in msg and needle in msg, msg


def test_generic_loader_missing_field_line_two(tmp_path):
    p = _write(tmp_path, [GOOD, '{"subject": "Spain", "template": "The capital of {} is"}'])
    with pytest.raises(RelationError, match=re.escape(f"{p.resolve()}:2: missing field 'object'")):
        load_generic_jsonl(p)


def test_generic_loader_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(RelationError, match="empty"):
        load_generic_jsonl(p)
    with pytest.raises(RelationError, match="not found"):
        get_relation(str(tmp_path / "missing.jsonl"))
