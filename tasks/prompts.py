"""Prompt building: k-shot demonstrations and the corrupted variants (METHOD.md §1).

Conventions
- text = k demonstrations + query, with no trailing space. A demonstration is
  ``fill(demo_template, s) + " " + o + ". "``; when the object already ends in "." (e.g.
  "Washington D.C.") only " " follows it, so the text never holds "..".
- Demonstrations for case i are drawn with ``random.Random(f"{seed}:{relation.name}:{shot}:{i}")``:
  subjects distinct from each other and from the query (case-insensitive); facts whose object equals
  the query's object are avoided when enough others exist.
- subject_corrupt: same case and demonstrations, the query subject replaced by another subject of the
  relation (seeded; prefers a subject whose object differs and that is not a demonstration subject).
  The target object stays the clean one.
- relation_corrupt: same case and demonstrations, the first whole-word occurrence of the query template's
  relation word (``template_relation_word``, chosen per template) replaced (case-preserving) by a seeded
  choice among ``UNRELATED_NOUNS``. Only a word that may be a noun is replaced (``looks_like_a_noun``): a verb
  or participle ("called", "works") replaced by a noun would change the syntax. A template without such a
  word has no relation-corrupted prompts (its cases are missing from the variant, not the relation).
- Prompts are returned grouped by variant, in the order the variants are given; prompt_id runs
  0..n-1 within each variant in ``cases`` order, and source_prompt_id points to the clean prompt_id.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import re

from factrecall.tasks.relations import STOPWORDS, Fact, Relation, fill_template, find_word

__all__ = ["NOT_NOUNS", "VARIANTS", "UNRELATED_NOUNS", "Prompt", "build_prompts", "demo_text", "looks_like_a_noun",
           "template_relation_word"]

VARIANTS = ("clean", "subject_corrupt", "relation_corrupt")
UNRELATED_NOUNS = ("colour", "weight", "shadow", "flavour", "melody", "texture", "rhythm", "surface")


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    relation: str
    shot: int
    variant: str
    fact_index: int
    template_index: int
    subject: str
    object: str
    query_subject: str
    text: str
    subject_span: tuple[int, int]
    demo_subjects: tuple[str, ...]
    source_prompt_id: int | None
    relation_word: str | None


def demo_text(template: str, fact: Fact) -> str:
    """One demonstration: the filled template, " ", the object, then ". " (no double period)."""
    return fill_template(template, fact.subject) + " " + fact.object + (" " if fact.object.endswith(".") else ". ")


def _lazy_permutation(n: int, rng: random.Random):
    """Yield a uniformly random permutation of range(n) one element at a time (O(1) per element)."""
    swapped: dict[int, int] = {}
    for i in range(n):
        j = rng.randrange(i, n)
        yield swapped.get(j, j)
        swapped[j] = swapped.get(i, i)


def _pick_demos(relation: Relation, query: Fact, shot: int, rng: random.Random) -> list[Fact]:
    if shot == 0:
        return []
    q_subj, q_obj = query.subject.casefold(), query.object.casefold()
    facts = relation.facts
    chosen: list[Fact] = []
    used = {q_subj}
    deferred: list[Fact] = []  # facts with the query's object, used only if the others run out
    for idx in _lazy_permutation(len(facts), rng):
        f = facts[idx]
        if f.subject.casefold() in used:
            continue
        if f.object.casefold() == q_obj:
            deferred.append(f)
            continue
        chosen.append(f)
        used.add(f.subject.casefold())
        if len(chosen) == shot:
            return chosen
    for f in deferred:
        if f.subject.casefold() not in used:
            chosen.append(f)
            used.add(f.subject.casefold())
            if len(chosen) == shot:
                return chosen
    raise ValueError(f"relation {relation.name}: not enough distinct subjects for {shot} demonstrations")


def _subject_index(relation: Relation) -> tuple[list[str], dict[str, str], dict[str, frozenset[str]]]:
    """Sorted casefolded subjects, their first spelling, and the casefolded objects of each."""
    spelling: dict[str, str] = {}
    objects: dict[str, set[str]] = {}
    for f in relation.facts:
        key = f.subject.casefold()
        spelling.setdefault(key, f.subject)
        objects.setdefault(key, set()).add(f.object.casefold())
    return sorted(spelling), spelling, {k: frozenset(v) for k, v in objects.items()}


def _pick_corrupt_subject(index, query: Fact, demos: list[Fact], rng: random.Random) -> str:
    keys, spelling, objects = index
    q_subj, q_obj = query.subject.casefold(), query.object.casefold()
    demo_keys = {d.subject.casefold() for d in demos}
    tiers = (lambda k: q_obj not in objects[k] and k not in demo_keys,  # preferred
             lambda k: q_obj not in objects[k],
             lambda k: k not in demo_keys,
             lambda k: True)
    seen: list[str] = []
    for idx in _lazy_permutation(len(keys), rng):
        k = keys[idx]
        if k == q_subj:
            continue
        if tiers[0](k):
            return spelling[k]
        seen.append(k)
    for ok in tiers[1:]:  # seen is the rest of a random permutation: first match is uniform
        for k in seen:
            if ok(k):
                return spelling[k]
    raise ValueError("subject_corrupt needs at least 2 distinct subjects")


def _match_case(src: str, word: str) -> str:
    if src.isupper() and len(src) > 1:
        return word.upper()
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


#: Relation words that are not nouns although no suffix rule says so (verbs, participles, prepositions, adverbs,
#: auxiliaries): replacing one by a noun would change the sentence's syntax, not just its task (docs/METHOD.md §1).
#: Words that are nouns as often as verbs ("work", "use", "border") are not listed: a template's noun phrase may hold them.
NOT_NOUNS = frozenset("""works plays originates evolves speaks speak lives belongs born written made known inside
    outside opposite native someone died maintains maintain communicates communicate specializes specialize
    specialises specialise performs perform writes write spoken found away within shares follows starts ends uses
    means looks sounds refers refer tends tend took can could will would may might must shall should""".split())


def looks_like_a_noun(word: str) -> bool:
    """Whether every word of ``word`` may be a noun: not a participle or gerund (-ed, -ing), an adverb (-ly), a
    superlative (-est), nor one of ``NOT_NOUNS``."""
    return all(w.lower() not in NOT_NOUNS and not w.lower().endswith(("ed", "ing", "ly", "est"))
               for w in word.split())


#: Sources whose relation word is named by the data (the paper's "capital", ParaRel's relation lemma), not
#: guessed from the first template: it is used in every template that contains it as a noun.
NAMED_WORD_SOURCES = ("paper", "pararel")


def template_relation_word(relation: Relation, template: str) -> str | None:
    """The word (or phrase) ``relation_corrupt`` replaces in ``template`` (docs/METHOD.md §1), or None.

    The relation's named word where the data names one (the paper's "capital", ParaRel's relation lemma) and the
    template holds it as a noun; otherwise the template's noun phrase that names the relation: runs of consecutive
    noun-like content words (not a stopword, ``looks_like_a_noun``, at least 3 letters, nothing but spaces between
    them), the last run followed by "of" if there is one ("{}'s phase of matter at room temperature is a" ->
    "phase"; "The capital city of {} is" -> "capital city"), else the last run ("{} is a country in the region of"
    -> "region"; "People from {} are called" -> "People"). A template with no such word ("{} is known as") has
    none."""
    span = _relation_span(relation, template)
    return None if span is None else template[span[0]:span[1]]


def _relation_span(relation: Relation, template: str) -> tuple[int, int] | None:
    """(start, end) of ``template_relation_word`` in the template."""
    named = relation.relation_word
    if relation.source in NAMED_WORD_SOURCES and named and looks_like_a_noun(named):
        m = find_word(template, named)
        if m is not None:
            return m.start(), m.end()
    runs: list[tuple[int, int, str | None]] = []  # (start, end, the word after the run)
    start = end = None
    for m in re.finditer(r"\{\}|[A-Za-z]+", template):
        w = m.group(0)
        joined = start is not None and template[end:m.start()].strip() == ""
        if w != "{}" and len(w) >= 3 and w.lower() not in STOPWORDS and looks_like_a_noun(w):
            if start is not None and not joined:  # punctuation between: a new run
                runs.append((start, end, None))
                start = None
            start, end = (m.start() if start is None else start), m.end()
            continue
        if start is not None:
            runs.append((start, end, w.lower() if joined else None))
        start = None
    if start is not None:
        runs.append((start, end, None))
    if not runs:
        return None
    before_of = [r for r in runs if r[2] == "of"]
    a, b, _ = (before_of or runs)[-1]
    return a, b


def _corrupt_template(relation: Relation, template: str, rng: random.Random) -> tuple[str, str] | None:
    """(corrupted template, "word->replacement"), or None when the template has no relation word."""
    span = _relation_span(relation, template)
    if span is None:
        return None
    a, b = span
    old = template[a:b]
    choices = [n for n in UNRELATED_NOUNS if n.casefold() != old.casefold()]
    new = _match_case(old, rng.choice(choices))
    return template[:a] + new + template[b:], f"{old}->{new}"


def build_prompts(relation: Relation, shot: int, seed: int, variants=("clean",),
                  max_prompts: int | None = None) -> list[Prompt]:
    """Prompts for the relation's cases (first ``max_prompts``) in each requested variant."""
    if not isinstance(shot, int) or isinstance(shot, bool) or shot < 0:
        raise ValueError(f"shot must be an integer >= 0, got {shot!r}")
    variants = tuple(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    if max_prompts is not None and max_prompts < 0:
        raise ValueError(f"max_prompts must be >= 0 or None, got {max_prompts}")
    n_subjects = len({f.subject.casefold() for f in relation.facts})
    if n_subjects < shot + 1:
        raise ValueError(
            f"relation {relation.name} has {n_subjects} distinct subject(s); a {shot}-shot prompt needs "
            f"{shot + 1} (the query plus {shot} different demonstration subjects). Use a smaller shot.")
    if "subject_corrupt" in variants and n_subjects < 2:
        raise ValueError(f"relation {relation.name} has a single subject; subject_corrupt needs two")

    cases = relation.cases if max_prompts is None else relation.cases[:max_prompts]
    index = _subject_index(relation) if "subject_corrupt" in variants else None
    out: dict[str, list[Prompt]] = {v: [] for v in variants}
    for i, (fi, ti) in enumerate(cases):
        fact, template = relation.facts[fi], relation.templates[ti]
        key = f"{seed}:{relation.name}:{shot}:{i}"
        demos = _pick_demos(relation, fact, shot, random.Random(key))
        prefix = "".join(demo_text(relation.demo_template, d) for d in demos)
        common = dict(relation=relation.name, shot=shot, fact_index=fi, template_index=ti,
                      subject=fact.subject, object=fact.object,
                      demo_subjects=tuple(d.subject for d in demos))
        for variant in variants:
            query_subject, query_template, word = fact.subject, template, None
            if variant == "subject_corrupt":
                query_subject = _pick_corrupt_subject(index, fact, demos,
                                                      random.Random(key + ":subject_corrupt"))
            elif variant == "relation_corrupt":
                corrupted = _corrupt_template(relation, template, random.Random(key + ":relation_corrupt"))
                if corrupted is None:  # this template names no relation word: no twin for this case
                    continue
                query_template, word = corrupted
            start = len(prefix) + query_template.index("{}")
            out[variant].append(Prompt(
                prompt_id=i, variant=variant, query_subject=query_subject,
                text=prefix + fill_template(query_template, query_subject),
                subject_span=(start, start + len(query_subject)),
                source_prompt_id=None if variant == "clean" else i, relation_word=word, **common))
    return [p for v in variants for p in out[v]]
