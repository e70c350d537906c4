"""Relations: (subject, object) facts plus templates with one "{}" subject slot.

Conventions
- A template holds exactly one "{}" and does not end in whitespace; the object is what the model
  should predict next ("The capital of {} is" -> " Paris").
- ``cases`` are (fact_index, template_index) pairs. For paper/LRE/ParaRel relations they are the
  cross product ordered template-major: all facts with template 0, then all facts with template 1, ...
  (so ``max_prompts`` keeps many subjects). ROME and user files pair each record with its own template.
- Built-in sources live in the ``factrecall.data`` package (see data/NOTICE.md):
  LRE uses each file's ``prompt_templates`` (not the zero-shot ``prompt_templates_zs``);
  ParaRel uses the paraphrase patterns that end in "[Y]"; ROME uses each record's ``template``
  (not its ``prompt``, which continues into the model's generation) and ``attribute`` as object.
- Upstream quirks are repaired on load and each repair is recorded in ``Relation.repairs``.
- Relation names: "paper.capital", "paper.capital_possessive", "lre.<stem>", "pararel.<Pid>",
  "rome.<Pid>", and for a user's .jsonl file "user.<stem>-<first 8 hex digits of its data hash>", so two
  different files with the same name never share a name (and the same facts under any path do).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib.resources
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RelationError", "Fact", "Relation", "paper_capital", "paper_capital_possessive", "load_lre",
    "load_pararel", "load_rome", "load_generic_jsonl", "list_relations", "get_relation", "is_builtin_relation",
    "fill_template", "find_word",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

STOPWORDS = frozenset(
    """a an the of in on at to for from by with as into onto about after before over under than
    is are was were be been being am has have had do does did it its it's this that these those which
    who whom whose what where when how why there here and or but not no so s t also very
    he she they his her their them we you your our i my me usually typically commonly likely""".split()
)


#: Domain labels the aggregating queries use for their own rows (every domain pooled; no recorded domain).
RESERVED_DOMAINS = ("all", "unknown")


class RelationError(ValueError):
    """A relation cannot be loaded: the message names the file (and line), the problem and the fix."""


@dataclass(frozen=True)
class Fact:
    subject: str
    object: str


@dataclass(frozen=True)
class Relation:
    name: str
    source: str
    domain: str
    templates: tuple[str, ...]
    facts: tuple[Fact, ...]
    cases: tuple[tuple[int, int], ...]
    demo_template: str
    relation_word: str | None
    repairs: tuple[str, ...]
    source_file: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise RelationError(
                f"relation name {self.name!r} is not valid: it may only contain letters, digits, "
                f"'_', '.' and '-'. Rename the relation (or its file) accordingly."
            )
        for t in (*self.templates, self.demo_template):
            _check_template(t, where=f"relation {self.name}")

    def data_hash(self) -> str:
        """sha256 of a canonical JSON (sorted keys, tuples as lists) of what decides the prompts, besides
        the name: facts, templates, cases, demonstration template, relation word, domain (not the file's
        path, not the repair notes)."""
        fields = dataclasses.asdict(self)
        for k in ("name", "source_file", "repairs"):
            fields.pop(k)
        payload = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def content_hash(self) -> str:
        """sha256 of the name and ``data_hash`` (the name seeds the demonstrations, so it is an input too)."""
        return hashlib.sha256(f"{self.name}\n{self.data_hash()}".encode("utf-8")).hexdigest()

    @property
    def n_prompts(self) -> int:
        return len(self.cases)


# ----------------------------------------------------------------------------------------- helpers

def fill_template(template: str, subject: str) -> str:
    """Put ``subject`` into the template's single "{}" slot (no str.format: braces elsewhere are kept)."""
    head, tail = template.split("{}", 1)
    return head + subject + tail


def find_word(text: str, word: str) -> re.Match | None:
    """First whole-word, case-insensitive occurrence of ``word`` (may be a phrase) in ``text``."""
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", text, re.IGNORECASE)


def _template_problem(template: object) -> str | None:
    if not isinstance(template, str):
        return "template is not a string"
    n = template.count("{}")
    if n != 1:
        return f"template {template!r} has {n} '{{}}' subject slots, it needs exactly one"
    if template != template.rstrip():
        return f"template {template!r} ends in whitespace (the object is appended as ' ' + object)"
    return None


def _check_template(template: str, where: str) -> None:
    problem = _template_problem(template)
    if problem:
        raise RelationError(f"{where}: {problem}. Write the template with one '{{}}' and no trailing space.")


def _fallback_relation_word(template: str) -> str | None:
    """Longest alphabetic non-stopword word of the template (ties: the last one, the head noun)."""
    best = None
    for w in re.findall(r"[A-Za-z]+", template.replace("{}", " ")):
        if w.lower() in STOPWORDS:
            continue
        if best is None or len(w) >= len(best):
            best = w
    return best


def _data_root() -> Path:
    return Path(str(importlib.resources.files("factrecall.data")))


def _resolve(path: str | os.PathLike) -> tuple[Path, str]:
    """(absolute path, source_file label): relative paths are looked up in the data package first."""
    p = Path(path)
    root = _data_root()
    if not p.is_absolute() and (root / p).exists():
        p = root / p
    p = p.resolve()
    try:
        label = p.relative_to(root.resolve()).as_posix()
    except ValueError:
        label = str(p)
    return p, label


def _cross_cases(n_facts: int, n_templates: int) -> tuple[tuple[int, int], ...]:
    return tuple((f, t) for t in range(n_templates) for f in range(n_facts))


def _add_case(facts: list[Fact], templates: list[str], cases: list[tuple[int, int]], fact: Fact,
              template: str) -> bool:
    """Append a (fact, template) case, reusing known facts/templates; False if it was a duplicate."""
    if fact not in facts:
        facts.append(fact)
    if template not in templates:
        templates.append(template)
    case = (facts.index(fact), templates.index(template))
    if case in cases:
        return False
    cases.append(case)
    return True


def _dedupe_facts(facts: list[Fact], repairs: list[str], label: str) -> list[Fact]:
    seen: set[Fact] = set()
    out = []
    for f in facts:
        if f not in seen:
            seen.add(f)
            out.append(f)
    if len(out) != len(facts):
        repairs.append(f"dropped {len(facts) - len(out)} exact duplicate fact(s) in {label}")
    return out


# ------------------------------------------------------------------------------------- paper task

PAPER_NATIONS = ("China", "USA", "Russia", "England", "France", "Japan", "Italy", "Canada",
                 "Australia", "Spain", "Egypt", "Portugal", "Austria", "Greece", "Thailand")
PAPER_CAPITALS = ("Beijing", "Washington", "Moscow", "London", "Paris", "Tokyo", "Rome", "Ottawa",
                  "Canberra", "Madrid", "Cairo", "Lisbon", "Vienna", "Athens", "Bangkok")
# Prefixes exactly as METHOD.md §1 writes them (some end with ",").
PAPER_PREFIXES = ("It's crucial to know that", "You are right to say that",
                  "Therefore, it's correct to state that", "When asked, always remember that",
                  "We confirm that", "Don't forget,", "Bear in mind,", "Keep in mind,",
                  "Just a reminder,", "As we all know,", "According to the textbook,", "I am sure that",
                  "Without a doubt,", "In case you didn't know,", "To emphasize,")
PAPER_DEMO_TEMPLATE = "The capital of {} is"


def _paper_facts() -> tuple[Fact, ...]:
    return tuple(Fact(n, c) for n, c in zip(PAPER_NATIONS, PAPER_CAPITALS, strict=True))


@functools.cache
def paper_capital() -> Relation:
    """The paper's task: 15 nations x 15 templates "<prefix>, the capital of {} is" (225 cases)."""
    templates = tuple(p.rstrip(",") + ", the capital of {} is" for p in PAPER_PREFIXES)
    n_comma = sum(p.endswith(",") for p in PAPER_PREFIXES)
    facts = _paper_facts()
    return Relation(
        name="paper.capital", source="paper", domain="factual", templates=templates, facts=facts,
        cases=_cross_cases(len(facts), len(templates)), demo_template=PAPER_DEMO_TEMPLATE,
        relation_word="capital",
        repairs=(f"{n_comma} of the 15 prefixes in METHOD.md end with ',' (e.g. \"Don't forget,\"); "
                 "they are joined as \"Don't forget, the capital of {} is\" instead of producing ',,'",),
        source_file="METHOD.md §1",
    )


@functools.cache
def paper_capital_possessive() -> Relation:
    """The paper's variant set: "{}'s capital is" for the 15 nations (15 cases)."""
    facts = _paper_facts()
    return Relation(
        name="paper.capital_possessive", source="paper", domain="factual",
        templates=("{}'s capital is",), facts=facts, cases=_cross_cases(len(facts), 1),
        demo_template=PAPER_DEMO_TEMPLATE, relation_word="capital", repairs=(),
        source_file="METHOD.md §1",
    )


# -------------------------------------------------------------------------------------------- LRE

_ESCAPED_UNICODE = re.compile(r"\\u([0-9a-fA-F]{4})")
# Upstream pairs whose subject and object are swapped: file stem -> {(subject, object)}.
_LRE_REVERSED = {"city_in_country": {("Costa Rica", "San José")}}


def _unescape(s: str) -> str:
    return _ESCAPED_UNICODE.sub(lambda m: chr(int(m.group(1), 16)), s)


@functools.cache
def _load_lre_cached(path: Path, label: str) -> Relation:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RelationError(f"{path}: file not found. Pass an LRE relation JSON file.") from None
    except json.JSONDecodeError as e:
        raise RelationError(f"{path}:{e.lineno}: invalid JSON ({e.msg}). Fix the JSON syntax.") from None
    try:
        samples, templates = raw["samples"], list(raw["prompt_templates"])
        domain = raw.get("properties", {}).get("relation_type", "factual")
    except (KeyError, TypeError, AttributeError):
        raise RelationError(f"{path}: not in the LRE format (needs 'samples' and 'prompt_templates'). "
                            f"Use a file from github.com/evandez/relations data/.") from None
    for t in templates:
        _check_template(t, where=str(path))
    repairs: list[str] = []
    n_esc = n_ws = 0
    facts = []
    for smp in samples:
        s, o = smp["subject"], smp["object"]
        s2, o2 = _unescape(s), _unescape(o)
        n_esc += (s2 != s) + (o2 != o)
        s3, o3 = s2.strip(), o2.strip()
        n_ws += (s3 != s2) + (o3 != o2)
        facts.append(Fact(s3, o3))
    if n_esc:
        repairs.append(f"decoded double-escaped unicode (literal '\\uXXXX') in {n_esc} string(s), "
                       f"e.g. 'Bras\\u00edlia' -> 'Brasília'")
    if n_ws:
        repairs.append(f"stripped leading/trailing whitespace from {n_ws} subject/object string(s)")
    reversed_pairs = _LRE_REVERSED.get(path.stem, set())
    dropped = [f for f in facts if (f.subject, f.object) in reversed_pairs]
    if dropped:
        facts = [f for f in facts if (f.subject, f.object) not in reversed_pairs]
        repairs.append(f"dropped {len(dropped)} reversed pair(s): "
                       + ", ".join(f"{f.subject!r} -> {f.object!r}" for f in dropped))
    facts = _dedupe_facts(facts, repairs, "samples")
    empty = [f for f in facts if not f.subject or not f.object]
    if empty:
        raise RelationError(f"{path}: {len(empty)} sample(s) with an empty subject or object. "
                            f"Remove them from the file.")
    return Relation(
        name=f"lre.{path.stem}", source="lre", domain=domain, templates=tuple(templates),
        facts=tuple(facts), cases=_cross_cases(len(facts), len(templates)),
        demo_template=templates[0], relation_word=_fallback_relation_word(templates[0]),
        repairs=tuple(repairs), source_file=label,
    )


def load_lre(path: str | os.PathLike) -> Relation:
    """Load an LRE relation file (absolute, or relative to the data package: 'lre-relations/...')."""
    return _load_lre_cached(*_resolve(path))


# ---------------------------------------------------------------------------------------- ParaRel

_PARAREL = "pararel"


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise RelationError(f"{path}:{i}: invalid JSON ({e.msg}). Fix that line.") from None
    return rows


@functools.cache
def _load_pararel_cached(pid: str, facts_path: Path, facts_label: str, patterns_path: Path) -> Relation:
    if not patterns_path.exists():
        raise RelationError(
            f"{patterns_path}: ParaRel relation {pid} has no pattern file, so it has no usable template "
            f"(upstream ParaRel ships none for P31 and P527). Pick a relation listed by "
            f"`factrecall relations`.")
    if not facts_path.exists():
        raise RelationError(f"{facts_path}: facts file for ParaRel relation {pid} not found. "
                            f"Pick a relation listed by `factrecall relations`.")
    repairs: list[str] = []
    templates: list[str] = []
    lemmas: list[str] = []
    n_skipped = n_space_period = n_spaces = n_dup = 0
    for lineno, row in _read_jsonl(patterns_path):
        pat = row.get("pattern")
        if not isinstance(pat, str) or pat.count("[X]") != 1 or pat.count("[Y]") != 1:
            raise RelationError(f"{patterns_path}:{lineno}: pattern must contain [X] and [Y] once. "
                                f"Fix or remove that line.")
        body = pat.rstrip()
        if body.endswith(" ."):
            n_space_period += 1
        body = body[:-1].rstrip() if body.endswith(".") else body
        if not body.endswith("[Y]"):
            n_skipped += 1
            continue
        collapsed = re.sub(r"\s+", " ", body[: -len("[Y]")].strip())
        n_spaces += collapsed != body[: -len("[Y]")].strip()
        template = collapsed.replace("[X]", "{}")
        if template in templates:
            n_dup += 1
            continue
        templates.append(template)
        lemmas.append(str(row.get("lemma", "")).replace("-", " ").strip())
    if not templates:
        raise RelationError(f"{patterns_path}: ParaRel relation {pid} has no pattern ending in [Y], so no "
                            f"next-token template. Pick another relation.")
    if n_skipped:
        repairs.append(f"skipped {n_skipped} pattern(s) where [Y] is not at the end (not a next-token prompt)")
    if n_space_period:
        repairs.append(f"{n_space_period} pattern(s) end in ' .' (space before the period); "
                       f"the trailing period is removed either way")
    if n_spaces:
        repairs.append(f"collapsed repeated whitespace in {n_spaces} pattern(s)")
    if n_dup:
        repairs.append(f"dropped {n_dup} pattern(s) that give a duplicate template")
    facts = []
    for lineno, row in _read_jsonl(facts_path):
        s, o = row.get("sub_label"), row.get("obj_label")
        if not isinstance(s, str) or not isinstance(o, str) or not s.strip() or not o.strip():
            raise RelationError(f"{facts_path}:{lineno}: needs non-empty string 'sub_label' and "
                                f"'obj_label'. Fix or remove that line.")
        facts.append(Fact(s.strip(), o.strip()))
    facts = _dedupe_facts(facts, repairs, "trex_lms_vocab")
    lemma = lemmas[0]
    word = lemma if lemma and find_word(templates[0], lemma) else _fallback_relation_word(templates[0])
    return Relation(
        name=f"pararel.{pid}", source="pararel", domain="factual", templates=tuple(templates),
        facts=tuple(facts), cases=_cross_cases(len(facts), len(templates)),
        demo_template=templates[0], relation_word=word, repairs=tuple(repairs), source_file=facts_label,
    )


def load_pararel(pid: str, facts_path=None, patterns_path=None) -> Relation:
    """ParaRel relation ``pid`` (e.g. "P36"): T-REx facts + its paraphrase patterns ending in [Y]."""
    root = _data_root() / _PARAREL
    if facts_path is None:
        facts_path = root / "trex_lms_vocab" / f"{pid}.jsonl"
    if patterns_path is None:
        patterns_path = root / "pattern_data" / "graphs_json" / f"{pid}.jsonl"
    fp, flabel = _resolve(facts_path)
    pp, _ = _resolve(patterns_path)
    return _load_pararel_cached(pid, fp, flabel, pp)


# ------------------------------------------------------------------------------------------- ROME

_ROME_FILE = "rome-known1000/known_1000.json"
_ROME_FIELDS = ("known_id", "subject", "attribute", "template", "prediction", "prompt", "relation_id")


@functools.cache
def _rome_records(path: Path) -> dict[str, list[dict]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RelationError(f"{path}: file not found. Pass ROME's known_1000.json.") from None
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in raw:  # only the 7 original ROME fields; per-model flags added by the copy are ignored
        rec = {k: rec[k] for k in _ROME_FIELDS if k in rec}
        groups[rec["relation_id"]].append(rec)
    return dict(groups)


@functools.cache
def _load_rome_cached(relation_id: str, path: Path, label: str) -> Relation:
    groups = _rome_records(path)
    if relation_id not in groups:
        raise RelationError(f"{path}: no records with relation_id {relation_id!r}. "
                            f"Known ids: {', '.join(sorted(groups))}.")
    facts: list[Fact] = []
    templates: list[str] = []
    cases: list[tuple[int, int]] = []
    repairs: list[str] = []
    n_dup = 0
    for rec in groups[relation_id]:
        fact = Fact(rec["subject"].strip(), rec["attribute"].strip())
        template = rec["template"]
        _check_template(template, where=f"{path} (known_id {rec.get('known_id')})")
        n_dup += not _add_case(facts, templates, cases, fact, template)
    if n_dup:
        repairs.append(f"dropped {n_dup} duplicate record(s)")
    return Relation(
        name=f"rome.{relation_id}", source="rome", domain="factual", templates=tuple(templates),
        facts=tuple(facts), cases=tuple(cases), demo_template=templates[0],
        relation_word=_fallback_relation_word(templates[0]), repairs=tuple(repairs), source_file=label,
    )


def load_rome(relation_id: str, path=None) -> Relation:
    """ROME known_1000 records of one Wikidata relation; each record is one case with its own template."""
    return _load_rome_cached(relation_id, *_resolve(path or _ROME_FILE))


# -------------------------------------------------------------------------------- user JSONL files

_GENERIC_FIX = ('Each line must be a JSON object like {"subject": "France", "object": "Paris", '
                '"template": "The capital of {} is"} (optional "domain")')


def load_generic_jsonl(path: str | os.PathLike, domain: str | None = None) -> Relation:
    """User relation: one JSON object per line with "subject", "object", "template" (+ optional "domain").
    ``domain`` (e.g. `--domain`): the domain of a file whose lines name none ("unspecified" without either);
    a file that names another one is an error.

    Blank lines are ignored; subject/object are stripped (recorded as a repair); exact duplicate
    lines are dropped (recorded). Each line is one case.
    """
    p = Path(path).resolve()

    def err(line: int | None, problem: str, fix: str) -> RelationError:
        where = f"{p}:{line}" if line is not None else f"{p}"
        return RelationError(f"{where}: {problem}. {fix}.")

    if not p.is_file():
        raise err(None, "file not found", "Pass the path of an existing .jsonl file")
    name = f"user.{p.stem}"  # + "-<hash8>" once the facts are read
    if not _NAME_RE.match(name):
        raise err(None, f"the file name gives the relation name {name!r}, which may only contain letters, "
                  "digits, '_', '.' and '-'", "Rename the file")
    if domain is not None and (not domain.strip() or domain.strip().casefold() in RESERVED_DOMAINS):
        raise err(None, f"domain {domain!r} is empty or reserved (the queries' roll-ups use 'all' and 'unknown')",
                  "Name the domain differently")
    given, domain = domain, None
    facts: list[Fact] = []
    templates: list[str] = []
    cases: list[tuple[int, int]] = []
    n_ws = n_dup = 0
    first_object: dict[tuple[str, str], tuple[str, int]] = {}  # (subject, template) -> (object, line)
    try:
        with p.open(encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise err(line, f"invalid UTF-8 ({exc.reason} at byte {exc.start})", "Save the file as UTF-8") from None
    except OSError as exc:
        raise err(None, f"cannot be read ({exc.strerror})", "Check the path and its permissions") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise err(i, f"invalid JSON ({e.msg} at column {e.colno})", _GENERIC_FIX) from None
        if not isinstance(row, dict):
            raise err(i, f"expected a JSON object, got {type(row).__name__}", _GENERIC_FIX)
        for key in ("subject", "object", "template"):
            if key not in row:
                raise err(i, f"missing field {key!r}", _GENERIC_FIX)
            if not isinstance(row[key], str):
                raise err(i, f"field {key!r} must be a string, got {type(row[key]).__name__}", _GENERIC_FIX)
        s, o = row["subject"].strip(), row["object"].strip()
        n_ws += (s != row["subject"]) + (o != row["object"])
        for key, val in (("subject", s), ("object", o)):
            if not val:
                raise err(i, f"empty {key}", f"Give a non-empty {key} or remove the line")
        problem = _template_problem(row["template"])
        if problem:
            raise err(i, problem, 'Write the template with exactly one "{}" where the subject goes, '
                      "ending right before the object (no trailing space)")
        if "domain" in row:
            d = row["domain"]
            if not isinstance(d, str) or not d.strip():
                raise err(i, "field 'domain' must be a non-empty string", "Fix or drop the field")
            if d.strip().casefold() in RESERVED_DOMAINS:
                raise err(i, f"domain {d!r} is reserved (the queries' roll-ups use 'all' and 'unknown')",
                          "Name the domain differently")
            if domain is not None and d != domain:
                raise err(i, f"domain {d!r} differs from {domain!r} given earlier",
                          "Use one domain per file")
            domain = d
        fact, template = Fact(s, o), row["template"]
        seen_as = first_object.setdefault((s.casefold(), template), (o, i))
        if seen_as[0] != o:
            raise err(i, f"subject {s!r} with template {template!r} has object {o!r} here but {seen_as[0]!r} "
                      f"on line {seen_as[1]}", "Keep one object per subject and template (remove or fix one line)")
        n_dup += not _add_case(facts, templates, cases, fact, template)
    if not cases:
        raise err(None, "the file has no facts (it is empty)", _GENERIC_FIX)
    repairs = []
    if n_ws:
        repairs.append(f"stripped leading/trailing whitespace from {n_ws} subject/object string(s)")
    if n_dup:
        repairs.append(f"dropped {n_dup} duplicate line(s)")
    if given is not None and domain is not None and given != domain:
        raise err(None, f"the file's lines say domain {domain!r} but {given!r} was given",
                  "Drop the field from the file or give the same domain")
    rel = Relation(
        name=name, source="user", domain=domain or given or "unspecified", templates=tuple(templates),
        facts=tuple(facts), cases=tuple(cases), demo_template=templates[0],
        relation_word=_fallback_relation_word(templates[0]), repairs=tuple(repairs), source_file=str(p),
    )
    return dataclasses.replace(rel, name=f"{name}-{rel.data_hash()[:8]}")


# --------------------------------------------------------------------------------------- registry

@functools.cache
def _registry() -> dict[str, object]:
    """Built-in relation name -> zero-argument loader (cached results)."""
    root = _data_root()
    reg: dict[str, object] = {
        "paper.capital": paper_capital,
        "paper.capital_possessive": paper_capital_possessive,
    }
    for f in sorted((root / "lre-relations").glob("*/*.json")):
        rel = f.relative_to(root).as_posix()
        reg[f"lre.{f.stem}"] = functools.partial(load_lre, rel)
    pats = root / _PARAREL / "pattern_data" / "graphs_json"
    for f in sorted((root / _PARAREL / "trex_lms_vocab").glob("P*.jsonl"), key=lambda q: int(q.stem[1:])):
        if (pats / f.name).exists():
            reg[f"pararel.{f.stem}"] = functools.partial(load_pararel, f.stem)
    for rid in sorted(_rome_records((root / _ROME_FILE).resolve()), key=lambda r: int(r[1:])):
        reg[f"rome.{rid}"] = functools.partial(load_rome, rid)
    return reg


def relation_names() -> list[str]:
    """Names of every built-in relation."""
    return list(_registry())


def list_relations(files: list[str] = ()):
    """polars DataFrame of every built-in relation (and of the relation ``files``): name, source, domain
    and counts."""
    import polars as pl

    rows = []
    for name in [*_registry(), *files]:
        r = get_relation(name)
        rows.append({"name": r.name, "source": r.source, "domain": r.domain, "n_facts": len(r.facts),
                     "n_templates": len(r.templates), "n_prompts": r.n_prompts, "n_repairs": len(r.repairs)})
    schema = {"name": pl.String, "source": pl.String, "domain": pl.String, "n_facts": pl.Int64,
              "n_templates": pl.Int64, "n_prompts": pl.Int64, "n_repairs": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def is_builtin_relation(name: str | os.PathLike) -> bool:
    """True for a built-in relation's name (a registered one or ``pararel.P<n>``), False for anything else
    (a relation file's path, or an unknown name): the one test of "relation file or not"."""
    key = str(name)
    return key in _registry() or re.fullmatch(r"pararel\.(P\d+)", key) is not None


def get_relation(name: str | os.PathLike, domain: str | None = None) -> Relation:
    """A built-in relation by name, or a user relation from a path to a generic .jsonl file; ``domain``: the
    domain of a relation file whose lines name none (for a built-in relation it must be its own)."""
    reg = _registry()
    key = str(name)
    if is_builtin_relation(key):
        if domain is not None:
            own = (reg[key]() if key in reg else load_pararel(key.split(".", 1)[1])).domain
            if domain != own:
                raise RelationError(f"relation {key} is in domain {own!r}, not {domain!r}; a domain can be given "
                                    "to relation files only (`factrecall relations` lists the built-in domains)")
    if key in reg:
        return reg[key]()
    m = re.fullmatch(r"pararel\.(P\d+)", key)
    if m and (_data_root() / _PARAREL / "trex_lms_vocab" / f"{m.group(1)}.jsonl").exists():
        return load_pararel(m.group(1))  # facts without patterns: raises the specific error
    if key.endswith(".jsonl") or os.sep in key or Path(key).is_file():
        if Path(key).is_file():
            return load_generic_jsonl(key, domain)
        raise RelationError(f"{key}: file not found. Pass the path of an existing .jsonl file in the "
                            f"generic format, or a built-in relation name (`factrecall relations`).")
    close = difflib.get_close_matches(key, list(reg), n=10, cutoff=0.5)
    if not close:
        low = key.lower()
        close = [n for n in reg if low in n.lower()][:10]
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise RelationError(
        f"unknown relation {key!r}.{hint} Run `factrecall relations` to list them all; a path to a "
        f'.jsonl file with one {{"subject", "object", "template"}} object per line is also accepted.'
    )
