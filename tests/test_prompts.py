"""Prompt building: k-shot demonstrations, seeding, corruptions, spans."""

import re
import subprocess
import sys

import pytest

from factrecall.tasks.prompts import UNRELATED_NOUNS, VARIANTS, build_prompts, template_relation_word
from factrecall.tasks.relations import Fact, Relation, get_relation, paper_capital

CAPITALS = dict(zip(
    "China USA Russia England France Japan Italy Canada Australia Spain Egypt Portugal Austria Greece Thailand".split(),
    "Beijing Washington Moscow London Paris Tokyo Rome Ottawa Canberra Madrid Cairo Lisbon Vienna Athens Bangkok".split()))


def _relation(facts, templates=("The colour of {} is",), word="colour", name="toy"):
    facts = tuple(Fact(s, o) for s, o in facts)
    return Relation(name=name, source="user", domain="x", templates=templates, facts=facts,
                    cases=tuple((f, t) for t in range(len(templates)) for f in range(len(facts))),
                    demo_template=templates[0], relation_word=word, repairs=(), source_file="x")


def _by_variant(prompts):
    out = {}
    for p in prompts:
        out.setdefault(p.variant, []).append(p)
    return out


def test_zero_shot_paper_texts():
    ps = build_prompts(paper_capital(), shot=0, seed=0)
    assert len(ps) == 225 and [p.prompt_id for p in ps] == list(range(225))
    texts = {p.text for p in ps}
    assert "It's crucial to know that, the capital of France is" in texts
    assert "Don't forget, the capital of Japan is" in texts
    assert all(p.demo_subjects == () and not p.text.endswith(" ") for p in ps)
    assert all(CAPITALS[p.subject] == p.object for p in ps)


def test_two_shot_structure():
    ps = build_prompts(paper_capital(), shot=2, seed=3)
    rx = re.compile(r"The capital of (\w+) is (\w+)\. The capital of (\w+) is (\w+)\. (.+), the capital of (\w+) is")
    for p in ps:
        m = rx.fullmatch(p.text)
        assert m, p.text
        s1, o1, s2, o2, _, q = m.groups()
        assert (s1, s2) == p.demo_subjects and q == p.subject
        assert CAPITALS[s1] == o1 and CAPITALS[s2] == o2
        assert len({s1.lower(), s2.lower(), q.lower()}) == 3


@pytest.mark.parametrize("name, shot", [("paper.capital", 5), ("lre.adj_comparative", 3),
                                        ("lre.word_first_letter", 4), ("pararel.P36", 2)])
def test_demos_distinct_and_avoid_query(name, shot):
    rel = get_relation(name)
    for p in build_prompts(rel, shot=shot, seed=1, variants=VARIANTS[:2], max_prompts=300):
        keys = [s.casefold() for s in p.demo_subjects]
        assert len(p.demo_subjects) == shot and len(set(keys)) == shot
        assert p.subject.casefold() not in keys


def test_demo_objects_differ_from_query_object_when_possible():
    # word_first_letter: many words share a first letter, and plenty do not.
    rel = get_relation("lre.word_first_letter")
    obj = {f.subject: f.object for f in rel.facts}
    for p in build_prompts(rel, shot=3, seed=0, max_prompts=200):
        assert all(obj[s] != p.object for s in p.demo_subjects), p.text


def test_demo_falls_back_to_same_object_when_needed():
    rel = _relation([("a", "x"), ("b", "x"), ("c", "y")])
    for p in build_prompts(rel, shot=2, seed=0):
        assert len(p.demo_subjects) == 2 and p.subject not in p.demo_subjects


def test_seeded_determinism():
    rel = paper_capital()
    a = build_prompts(rel, shot=2, seed=7, variants=VARIANTS)
    assert a == build_prompts(rel, shot=2, seed=7, variants=VARIANTS)
    b = build_prompts(rel, shot=2, seed=8, variants=VARIANTS)
    assert any(x.text != y.text for x, y in zip(a, b))
    code = ("from factrecall.tasks.prompts import build_prompts; from factrecall.tasks.relations import "
            "paper_capital; print(build_prompts(paper_capital(), 2, 7)[17].text)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == a[17].text


@pytest.mark.parametrize("name", ["paper.capital", "paper.capital_possessive", "lre.country_capital_city",
                                  "rome.P36"])
@pytest.mark.parametrize("shot", [0, 1, 3])
def test_subject_span_for_every_variant(name, shot):
    rel = get_relation(name)
    variants = VARIANTS if rel.relation_word and all(rel.relation_word in t for t in rel.templates) else VARIANTS[:2]
    ps = build_prompts(rel, shot=shot, seed=0, variants=variants)
    groups = _by_variant(ps)
    assert set(groups) == set(variants)
    for v, group in groups.items():
        assert [p.prompt_id for p in group] == list(range(rel.n_prompts))
        for p in group:
            a, b = p.subject_span
            assert p.text[a:b] == p.query_subject
            # the span is in the query part: every demonstration ends before it
            demos = p.text[:a]
            assert demos.count(". ") >= shot and p.text[b:].count(". ") == 0
            assert p.source_prompt_id == (None if v == "clean" else p.prompt_id)


def test_subject_corrupt():
    rel = get_relation("lre.country_language")
    objects = {}
    for f in rel.facts:
        objects.setdefault(f.subject, set()).add(f.object)
    ps = _by_variant(build_prompts(rel, shot=2, seed=0, variants=("clean", "subject_corrupt")))
    for clean, bad in zip(ps["clean"], ps["subject_corrupt"]):
        assert bad.query_subject.casefold() != clean.subject.casefold()
        assert bad.object == clean.object and bad.subject == clean.subject
        assert bad.demo_subjects == clean.demo_subjects
        a, b = clean.subject_span
        assert bad.text == clean.text[:a] + bad.query_subject + clean.text[b:]
        # country_language has many countries with other languages: the corruption picks one of them
        assert clean.object not in objects[bad.query_subject]
        assert bad.query_subject not in bad.demo_subjects


def test_relation_corrupt_changes_only_the_word():
    ps = _by_variant(build_prompts(paper_capital(), shot=1, seed=0, variants=("clean", "relation_corrupt")))
    used = set()
    for clean, bad in zip(ps["clean"], ps["relation_corrupt"]):
        old, new = bad.relation_word.split("->")
        assert old == "capital" and new in UNRELATED_NOUNS
        used.add(new)
        i = clean.text.rindex("capital")
        assert bad.text == clean.text[:i] + new + clean.text[i + len("capital"):]
        assert bad.query_subject == clean.subject and bad.demo_subjects == clean.demo_subjects
    assert len(used) > 1  # seeded choice, not a constant


def test_relation_corrupt_preserves_case_and_skips_templates_without_a_word():
    rel = _relation([("a", "x"), ("b", "y")], templates=("Colour of {} is",), word="colour")
    p = build_prompts(rel, shot=0, seed=0, variants=("relation_corrupt",))[0]
    new = p.relation_word.split("->")[1]
    assert new[0].isupper() and p.text == f"{new} of a is"
    # a template that names no relation word has no twin; the other template's prompts keep theirs
    rel = _relation([("a", "x"), ("b", "y")], templates=("The colour of {} is", "{} is known as"), word="colour")
    bad = build_prompts(rel, shot=0, seed=0, variants=("relation_corrupt",))
    assert [(p.template_index, p.relation_word.split("->")[0]) for p in bad] == [(0, "colour"), (0, "colour")]


@pytest.mark.parametrize("template, word", [
    ("{} is a country in the region of", "region"),  # the head of the relation's phrase, not the longest word
    ("People from {} are called", "People"),  # "called" is a participle: the noun is the relation's word
    ("The official language of {} is", "official language"),  # the noun phrase, not only its last word
    ("{} plays the position of", "position"),
    ("{}'s phase of matter at room temperature is a", "phase"),  # the phrase followed by "of" names the relation
    ("The capital city of {} is", "capital city"),
    ("People in {} speak", "People"),  # a verb is not replaced by a noun
    ("The capital, city of {} is", "city"),  # a run does not cross punctuation
    ("{} took up work in", "work"),  # "took" is a verb, "work" a noun here
    ("{} is known as", None),  # nothing but stopwords and a participle: no relation word
])
def test_the_relation_word_is_chosen_per_template(template, word):
    rel = _relation([("a", "x"), ("b", "y")], templates=(template,), word="country")  # a guessed relation word
    assert template_relation_word(rel, template) == word
    bad = build_prompts(rel, shot=0, seed=0, variants=("relation_corrupt",))
    assert [p.relation_word.split("->")[0] for p in bad] == ([word, word] if word else [])


def test_the_chosen_phrase_is_replaced_where_it_was_chosen():
    """The phrase before "of" is the second "colour" here: the replacement is there, not at the first match."""
    rel = _relation([("a", "x"), ("b", "y")], templates=("The colour of the colour of {} is",), word="x")
    p = build_prompts(rel, shot=0, seed=0, variants=("relation_corrupt",))[0]
    old, new = p.relation_word.split("->")
    assert old == "colour" and p.text == f"The colour of the {new} of a is"


def test_a_named_relation_word_is_kept_where_the_template_has_it():
    """paper.capital names "capital"; every one of its 15 templates holds it (and longer words such as "emphasize")."""
    rel = paper_capital()
    assert {template_relation_word(rel, t) for t in rel.templates} == {"capital"}


def test_errors_and_truncation():
    rel = _relation([("a", "x"), ("A", "y"), ("b", "z")])  # only 2 distinct subjects (case-insensitive)
    with pytest.raises(ValueError, match="shot"):
        build_prompts(rel, shot=-1, seed=0)
    with pytest.raises(ValueError, match="distinct subject"):
        build_prompts(rel, shot=2, seed=0)
    with pytest.raises(ValueError, match="variant"):
        build_prompts(rel, shot=0, seed=0, variants=("nonsense",))
    ps = build_prompts(paper_capital(), shot=1, seed=0, variants=("clean", "subject_corrupt"), max_prompts=10)
    assert len(ps) == 20
    assert [(p.fact_index, p.template_index) for p in ps[:10]] == list(paper_capital().cases[:10])


def test_demo_object_with_period_not_doubled():
    rel = _relation([("US", "Washington D.C."), ("France", "Paris")], templates=("The capital of {} is",),
                    word="capital")
    p = build_prompts(rel, shot=1, seed=0)[1]
    assert p.text == "The capital of US is Washington D.C. The capital of France is"


def test_a_relation_word_that_is_not_a_noun_is_not_replaced_by_one():
    """"The person is called {}" with "called" -> "colour" would be nonsense, not a task control."""
    import dataclasses

    from factrecall.tasks.prompts import looks_like_a_noun

    assert [looks_like_a_noun(w) for w in ("capital", "language", "official language", "CEO")] == [True] * 4
    assert [looks_like_a_noun(w) for w in ("called", "works", "located", "is located", "largest", "born")] == [False] * 6
    relation = dataclasses.replace(get_relation("paper.capital"), relation_word="called",
                                   templates=("{} is called",), demo_template="{} is called",
                                   cases=((0, 0), (1, 0)))
    assert build_prompts(relation, 0, 0, variants=("relation_corrupt",)) == []  # no noun in its only template
    assert build_prompts(get_relation("paper.capital"), 0, 0, variants=("relation_corrupt",), max_prompts=1)
