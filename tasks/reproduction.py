"""Reproduction specs and drift (docs/METHOD.md §11): what a scheduled reproduction runs, and whether its
claims moved since the last one.

A spec is a TOML file (``reproductions/*.toml``)::

    name = "paper-quick"          # reproductions of the same name are compared with each other
    version = 1                   # bump when the spec's meaning changes
    description = "..."
    models = ["smollm2-135m"]
    shots = [0, 2]
    dtype = "float32"             # optional: every model's dtype...
    [model_dtypes]                # optional: ...except these (e.g. a big model in bfloat16, METHOD §9)
    "qwen2.5-coder-1.5b" = "bfloat16"
    baseline = "paper-quick.baseline.csv"   # optional: compare with this file (relative to the spec)
    [settings]                    # any setting of the claims stage (and the stages it builds on)
    max_prompts = 40
    [[relations]]
    name = "paper.capital"
    domain = "factual"            # checked against the relation's own domain
    [tolerance]                   # absolute tolerance on each claim's value; "default" for the others
    default = 0.05

Drift compares two sets of claim rows keyed by (model, relation, shot, claim): a statistic drifted when
its value moved by more than its tolerance, when its verdict changed (whatever the tolerance), or when it
is present in only one of the two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .claims import CLAIMS, DOES_NOT, HOLDS, INCONCLUSIVE, NOT_TESTED

__all__ = ["DEFAULT_TOLERANCE", "Spec", "SpecError", "drift_rows", "find_spec", "load_spec", "spec_dir",
           "verdict_counts"]

#: Tolerance of a claim's value when the spec names none (absolute; values are effects, R², Δp, r).
DEFAULT_TOLERANCE = 0.02

_KEYS = {"name", "version", "description", "models", "shots", "dtype", "model_dtypes", "baseline", "settings",
         "relations", "tolerance"}


class SpecError(ValueError):
    """A reproduction spec that cannot be used (the message names the file, the key and the fix)."""


@dataclass(frozen=True)
class Spec:
    name: str
    version: int
    path: Path
    text: str
    models: tuple[str, ...]
    relations: tuple[str, ...]
    domains: dict[str, str]  # relation name -> its domain
    file_domains: dict[str, str]  # relation file (as in ``relations``) -> the domain the spec gives it
    shots: tuple[int, ...]
    dtype: str = "float32"
    description: str = ""
    model_dtypes: dict[str, str] = field(default_factory=dict)  # model -> its dtype where it is not ``dtype``
    settings: dict = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)  # claim -> tolerance ("default" included)
    baseline: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def dtype_of(self, model: str) -> str:
        return self.model_dtypes.get(model, self.dtype)

    def tolerance_of(self, claim: str) -> float:
        return self.tolerance.get(claim, self.tolerance.get("default", DEFAULT_TOLERANCE))


def spec_dir() -> Path:
    """The folder of the specs shipped with factrecall (``reproductions/`` in the repository)."""
    from importlib import resources

    return Path(str(resources.files("factrecall.reproductions")))


def find_spec(ref: str | Path) -> Path:
    """A spec file from a path, or a shipped spec's name ("paper-quick")."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = spec_dir() / f"{ref}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in spec_dir().glob("*.toml"))
    raise SpecError(f"{ref}: no such spec file; pass a .toml path or a shipped spec ({', '.join(names)})")


def load_spec(ref: str | Path) -> Spec:
    """Read and check a spec: keys, types, relations (and their domains), settings (the claims stage's)."""
    from .claims_stage import ClaimsConfig
    from .relations import RelationError, get_relation, is_builtin_relation

    path = find_spec(ref)
    text = path.read_text(encoding="utf-8")
    where = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: not valid TOML ({exc}); fix the file") from None
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; a spec has {', '.join(sorted(_KEYS))}")
    for key in ("name", "models", "shots", "relations"):
        if key not in raw:
            raise SpecError(f"{where}: missing key {key!r}; see reproductions/paper-quick.toml for an example")

    def listed(key, kind):
        value = raw[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
            raise SpecError(f"{where}: {key} must be a non-empty list of {kind.__name__}; got {value!r}")
        return tuple(value)

    models, shots = listed("models", str), listed("shots", int)
    if any(isinstance(s, bool) or s < 0 for s in shots):
        raise SpecError(f"{where}: shots must be non-negative integers; got {list(shots)}")
    for key, values in (("models", models), ("shots", shots)):
        if len(set(values)) != len(values):
            raise SpecError(f"{where}: {key} lists a value twice ({list(values)}); list each once")
    if not isinstance(raw.get("version", 1), int) or isinstance(raw.get("version", 1), bool):
        raise SpecError(f"{where}: version must be an integer; got {raw['version']!r}")
    from .models import DTYPES

    dtype, model_dtypes = raw.get("dtype", "float32"), raw.get("model_dtypes", {})
    if dtype not in DTYPES:
        raise SpecError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(model_dtypes, dict):
        raise SpecError(f"{where}: model_dtypes must be a table of model = dtype, e.g. "
                        '[model_dtypes] "qwen2.5-coder-1.5b" = "bfloat16"')
    for model, value in model_dtypes.items():
        if model not in models:
            raise SpecError(f"{where}: [model_dtypes] names {model!r}, which is not in models; list it in models "
                            "or drop the line")
        if value not in DTYPES:
            raise SpecError(f"{where}: [model_dtypes] {model} = {value!r} is not one of {', '.join(DTYPES)}")
    relations, domains, file_domains = [], {}, {}
    for i, item in enumerate(raw["relations"] if isinstance(raw["relations"], list) else [None]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SpecError(f"{where}: relations[{i}] must be a table with a name (and a domain), e.g. "
                            '[[relations]] name = "paper.capital" domain = "factual"')
        extra = sorted(set(item) - {"name", "domain"})
        if extra:
            raise SpecError(f"{where}: relations[{i}] has unknown key(s) {', '.join(extra)}; a relation has a name "
                            "and a domain (top-level keys go before the first [[relations]])")
        name = item["name"]
        ref_path = (path.parent / name) if name.endswith(".jsonl") and not Path(name).is_absolute() else None
        key = str(ref_path) if ref_path is not None and ref_path.is_file() else name
        is_file = not is_builtin_relation(key)
        try:
            relation = get_relation(key, item.get("domain") if is_file else None)
        except RelationError as exc:
            raise SpecError(f"{where}: relations[{i}]: {exc}") from None
        if is_file and "domain" in item:
            file_domains[key] = item["domain"]
        if "domain" in item and item["domain"] != relation.domain:
            raise SpecError(f"{where}: relation {name} is in domain {relation.domain!r}, not {item['domain']!r}; "
                            "fix the spec (a user file sets its domain with a \"domain\" field on its lines)")
        if relation.name in domains:
            raise SpecError(f"{where}: relation {relation.name} is listed twice; list each once")
        relations.append(key)
        domains[relation.name] = relation.domain
    settings = raw.get("settings", {})
    names = {f.name for f in dataclasses.fields(ClaimsConfig)}
    bad = sorted(set(settings) - names)
    if bad:
        raise SpecError(f"{where}: unknown setting(s) {', '.join(bad)}; settings are {', '.join(sorted(names))}")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    for f in dataclasses.fields(ClaimsConfig):
        value, lo, hi = settings.get(f.name), f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, (int, float)) and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            raise SpecError(f"{where}: [settings] {f.name} = {value} is outside [{lo}, {hi if hi is not None else '∞'}]")
    try:
        ClaimsConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: [settings]: {exc}") from None
    tolerance = raw.get("tolerance", {})
    claims = {c.name for c in CLAIMS}
    bad = sorted(set(tolerance) - claims - {"default"})
    if bad:
        raise SpecError(f"{where}: [tolerance] names unknown claim(s) {', '.join(bad)}; claims are "
                        f"{', '.join(c.name for c in CLAIMS)} (and default)")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in tolerance.values()):
        raise SpecError(f"{where}: tolerances must be non-negative numbers; got {tolerance}")
    baseline = raw.get("baseline")
    if baseline is not None:
        baseline = (path.parent / baseline).resolve()
        if not baseline.is_file():
            raise SpecError(f"{where}: baseline file {baseline} not found; fix the path or drop the key")
    return Spec(name=str(raw["name"]), version=int(raw.get("version", 1)), path=path.resolve(), text=text,
                models=models, relations=tuple(relations), domains=domains, file_domains=file_domains, shots=shots,
                dtype=dtype, model_dtypes=dict(model_dtypes), description=raw.get("description", ""), settings=settings,
                tolerance={k: float(v) for k, v in tolerance.items()}, baseline=baseline)


def _key(row: dict) -> tuple:
    return row["model"], row["relation"], int(row["shot"]), row["claim"]


def drift_rows(before: list[dict], now: list[dict], tolerance_of) -> list[dict]:
    """One row per (model, relation, shot, claim) in either set: before, now, difference, tolerance, verdicts,
    drifted and why. ``tolerance_of(claim) -> float``. Rows carry the claims' keys; sorted by key."""
    old, new = {_key(r): r for r in before}, {_key(r): r for r in now}
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k[0], k[1], k[2], k[3])):
        b, n = old.get(key), new.get(key)
        tol = tolerance_of(key[3])
        bv, nv = (b or {}).get("value"), (n or {}).get("value")
        bv = None if bv is None or (isinstance(bv, float) and math.isnan(bv)) else bv
        nv = None if nv is None or (isinstance(nv, float) and math.isnan(nv)) else nv
        diff = None if bv is None or nv is None else nv - bv
        reasons = []
        if b is None:
            reasons.append("new: not in the earlier reproduction")
        elif n is None:
            reasons.append("missing: not in this reproduction")
        else:
            if b["verdict"] != n["verdict"]:
                reasons.append(f"verdict {b['verdict']} -> {n['verdict']}")
            if diff is not None and abs(diff) > tol:
                reasons.append(f"moved {diff:+.4g} (tolerance {tol:g})")
            elif (bv is None) != (nv is None):
                reasons.append("value " + ("appeared" if bv is None else "disappeared"))
        out.append({"model": key[0], "relation": key[1], "shot": key[2], "claim": key[3], "before": bv, "now": nv,
                    "difference": diff, "tolerance": tol, "before_verdict": (b or {}).get("verdict"),
                    "now_verdict": (n or {}).get("verdict"), "drifted": bool(reasons),
                    "reason": "; ".join(reasons) or None})
    return out


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    return {v: sum(r["verdict"] == v for r in rows) for v in (HOLDS, DOES_NOT, INCONCLUSIVE, NOT_TESTED)}
