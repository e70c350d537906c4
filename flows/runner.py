"""The one runner of every stage: identity, hashing, reuse, commit, selection, provenance, Prefect
tasks, progress and timing (docs/METHOD.md §8).

For one (model, relation, shot) and a stage asked for with a config, ``Runner.run``:

1. makes sure each upstream stage has a selected, current result that meets the requirement derived
   from the config (an upstream config takes the config's fields of the same name): the selected one if
   it does, else a stored compatible one (selected now), else it computes one;
2. hashes the stage's inputs: the model file and dtype, the relation's content, the shot, the stage's
   settings (those that change results), the stage's version and its extra inputs;
3. reuses a stored, intact result with that hash whose upstream requirements the selection meets, or
   computes one: the stage's compute, its encoder, a streamed write, one commit per table and the
   record in ``_results`` last;
4. selects the result for the key, and says what the selection replaced.

Models are loaded on first need: a command whose every partition is reused loads no model.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import torch

from factrecall.stages import STAGES, Stage
from factrecall.storage.catalog import Catalog, Key, Requirement, ResultRecord, describe
from factrecall.storage.store import Store
from factrecall.tasks.capture_stage import LedgerError
from factrecall.tasks.final_layer_stage import RerunMismatchError
from factrecall.tasks.models import (
    DTYPES,
    DeviceMemoryError,
    LoadedModel,
    ModelLoadError,
    PreparedModel,
    load_model,
    loaded_model_record,
    load_tokenizer,
    model_key,
    prepare_model,
    prepared_model_record,
    resolve,
)
from factrecall.tasks.relations import Relation
from factrecall.tasks.stage_api import StageInput, StageOutput, hashed_settings
from factrecall.tasks.upstream_checks import StoreMismatchError

__all__ = ["ModelHandle", "Outcome", "REFUSALS", "ResultReader", "Runner", "code_digest", "derive_config", "run_stage"]

#: A model whose numbers do not add up, or that does not fit the device, is refused: its remaining partitions are
#: not attempted (the other models of the command go on).
REFUSALS = (LedgerError, RerunMismatchError, StoreMismatchError, DeviceMemoryError)


class ModelHandle:
    """A model reference resolved without loading it (id and file hash); prepared (files local, config
    checked), its tokenizer and its weights loaded on first need, each once."""

    def __init__(self, ref: str, dtype: str = "float32", device: str | None = None, cache_dir: Path | None = None,
                 loaded: LoadedModel | None = None) -> None:
        from factrecall.paths import model_cache_dir

        self.ref, self.dtype, self.device = ref, dtype, device
        self._lm = loaded
        self._prepared: PreparedModel | None = None
        self._tokenizer = None
        self.load_seconds = 0.0
        if loaded is not None:
            self.model_id, self.file_sha256, self.source = loaded.model_id, loaded.file_sha256, loaded.source
            self.dtype = str(loaded.dtype).removeprefix("torch.")
            self._tokenizer = loaded.tokenizer
        else:
            if dtype not in DTYPES:
                raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
            self._cache_dir = cache_dir or model_cache_dir()
            model_id, _, location, self.file_sha256 = resolve(ref, self._cache_dir)
            self.model_id, self.source = model_key(model_id, dtype), str(location)

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def prepare(self) -> PreparedModel | None:
        """Make the files local and check the config (None for a model handed in loaded)."""
        if self._prepared is None and self._lm is None:
            self._prepared = prepare_model(self.ref, self.dtype, self._cache_dir)
        return self._prepared

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.prepare())
        return self._tokenizer

    def get(self) -> LoadedModel:
        if self._lm is None:
            t0 = time.perf_counter()
            self._lm = load_model(self.prepare(), device=self.device, tokenizer=self._tokenizer)
            self.load_seconds = time.perf_counter() - t0
        return self._lm


    def record(self) -> dict:
        """The ``models`` record of this model (family, sizes, parameter count), without loading its weights."""
        if self._lm is not None:
            return loaded_model_record(self._lm, self.ref)
        return prepared_model_record(self.prepare())


def derive_config(config_cls: type, config) -> object:
    """``config_cls`` built from ``config``'s fields of the same name (the rest keep their defaults)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names})


def code_digest(stage: Stage) -> str:
    """sha256[:12] of the source of the modules that compute ``stage`` (recorded, not hashed). Read once per
    process (``pin_code``): the code a run computes with is the code it imported, even if the files change while
    it runs (a checkout updated under a long sweep recorded the new files' digest)."""
    return _source_digest(tuple(stage.code))


@functools.lru_cache(maxsize=None)
def _source_digest(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        spec = importlib.util.find_spec(module)
        digest.update(module.encode())
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:12]


def pin_code() -> None:
    """Read the code's digests now, when the modules have just been imported (this module's import, below): every
    stage's ``code_digest`` and the package's ``code_version``, both cached for the process."""
    from factrecall.version import code_version

    for stage in STAGES.values():
        code_digest(stage)
    code_version()


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    input_hash: str
    family: str
    n_prompts: int
    variants: tuple[str, ...]

    def requirement(self, stage: str) -> Requirement:
        return Requirement(stage, self.family, self.n_prompts, self.variants)


def identity(stage: Stage, config, model: ModelHandle, relation: Relation, shot: int) -> Identity:
    """What decides ``stage``'s result for this partition (see the module docstring, step 2)."""
    settings = hashed_settings(config)
    payload = {"stage": stage.name, "version": stage.version, "model": model.file_sha256 or model.source,
               "dtype": model.dtype, "relation": relation.content_hash(), "shot": shot, "settings": settings,
               "extra": stage.extra_inputs(config) if stage.extra_inputs else None}
    input_hash = _hash(payload)
    if stage.coverage_fields:
        family = _hash({**payload, "settings": {k: v for k, v in settings.items() if k not in stage.coverage_fields}})
    else:
        family = input_hash
    n = relation.n_prompts if config.max_prompts is None else min(config.max_prompts, relation.n_prompts)
    return Identity(input_hash, family, n, tuple(getattr(config, "variants", ("clean",))))


@dataclass
class Outcome:
    """What a command did for one partition of one stage."""

    stage: str
    model: str
    relation: str
    shot: int
    status: str  # "written" | "skipped" (an identical result was reused)
    result_id: str
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ResultReader:
    """An upstream result as a stage reads it."""

    def __init__(self, store: Store, rec: ResultRecord) -> None:
        self._store, self._rec = store, rec
        self.result_id, self.summary = rec.result_id, rec.summary
        self.tables = dict(rec.tables)  # table -> rows written

    def read(self, table, columns=None, filters=None):
        return self._store.read(self._rec, table, columns, filters)


class Runner:
    """Runs stages for partitions of one store within one command (one ``run_id``)."""

    def __init__(self, store: Store, run_id: str, catalog: Catalog | None = None) -> None:
        self.store, self.run_id = store, run_id
        self.catalog = catalog if catalog is not None else store.verified_catalog()[0]
        self.notes: list[str] = []  # selection changes (and "memory: ..." batch-size changes), in order
        self._batch_limits: dict[tuple[str, str], int] = {}  # (model, stage) -> the batch size that fitted
        self.touched: set[Key] = set()

    # -- one partition ---------------------------------------------------------------------------
    def run(self, stage_name: str, config, model: ModelHandle, relation: Relation, shot: int,
            progress=None, force: bool = False) -> Outcome:
        """Make sure ``stage_name``'s result for these inputs exists, is current and is selected, with the
        upstream results it was computed from (selected together, in one transaction)."""
        stage = STAGES[stage_name]
        key = (model.model_id, relation.name, shot)
        self.touched.add(key)
        chain: list[ResultRecord] = []
        ups = self._ensure_upstream(stage, config, model, relation, shot, chain)
        ident = identity(stage, config, model, relation, shot)
        reusable = None if force else self._first_readable(self._reusable(key, stage.name, ident))
        if reusable is not None:
            rec, status, seconds = reusable, "skipped", 0.0
        else:
            rec, seconds = self._compute(stage, config, model, relation, shot, ident, ups, progress)
            status = "written"
        self._choose(rec, chain)
        self.store.select(chain, self.run_id)
        return Outcome(stage.name, *key, status, rec.result_id, seconds, rec.summary)

    def _reusable(self, key: Key, stage: str, ident: Identity) -> list[ResultRecord]:
        """Stored intact results with exactly these inputs whose upstream the selection meets (selected first)."""
        sel = self.catalog.selected(key, stage)
        found = [r for r in self.catalog.results.values()
                 if r.key == key and r.stage == stage and r.input_hash == ident.input_hash
                 and self.catalog.intact(r) and self.catalog.upstream_problem(r) is None]
        return sorted(found, key=lambda r: (sel is None or r.result_id != sel.result_id, -r.committed_at.timestamp()))

    def _ensure_upstream(self, stage: Stage, config, model, relation, shot,
                         chain: list[ResultRecord]) -> dict[str, tuple[ResultRecord, Requirement]]:
        """Each upstream stage's result for the requirement derived from ``config`` (the selected one if it
        meets it, else a stored one, else computed), chosen for selection and added to ``chain``."""
        out = {}
        for name in stage.upstream:
            up = STAGES[name]
            up_config = derive_config(up.config, config)
            ups = self._ensure_upstream(up, up_config, model, relation, shot, chain)  # its own upstream first
            ident = identity(up, up_config, model, relation, shot)
            req = ident.requirement(name)
            rec = self._first_readable(self.catalog.candidates((model.model_id, relation.name, shot), req))
            if rec is None:
                rec = self._compute(up, up_config, model, relation, shot, ident, ups, None)[0]
            self._choose(rec, chain)
            out[name] = (rec, req)
        return out

    def _first_readable(self, recs: list[ResultRecord]) -> ResultRecord | None:
        """The first of ``recs`` whose files' Parquet footers read back (a corrupt file of the right size
        passes the size check); the others are marked damaged, so they are recomputed, not reused."""
        for rec in recs:
            problem = self.store.footer_problem(rec)
            if problem is None:
                return rec
            self.catalog.damaged[rec.result_id] = problem
        return None

    def _choose(self, rec: ResultRecord, chain: list[ResultRecord]) -> None:
        """Select ``rec`` in memory (the partition's chain is written to the store at the end of ``run``),
        noting what it replaces."""
        if rec not in chain:
            chain.append(rec)
        before = self.catalog.select(rec)
        if before is not None and before in self.catalog.results:
            old = self.catalog.results[before]
            self.notes.append(f"{rec.model}/{rec.relation}/shot={rec.shot}: {rec.stage} now shows result "
                              f"{rec.result_id} ({describe(rec)}) instead of {old.result_id} ({describe(old)}), "
                              "which stays stored")

    def _compute(self, stage: Stage, config, model: ModelHandle, relation: Relation, shot: int, ident: Identity,
                 ups: dict[str, tuple[ResultRecord, Requirement]], progress) -> tuple[ResultRecord, float]:
        """Compute and commit one result. Out of device memory, it starts again at half the batch size (which
        does not change results and is not part of the identity) down to 1, and later partitions of the model
        start at the size that fitted; nothing of a failed try is kept."""
        where = f"{model.model_id}/{relation.name}/shot={shot}"
        if stage.needs_model:
            try:
                model.get()
            except torch.OutOfMemoryError:
                raise DeviceMemoryError(f"{model.model_id} does not fit in the device's memory; use --device cpu, "
                                        "--dtype bfloat16 or a smaller model") from None
        limit = self._batch_limits.get((model.model_id, stage.name))
        if limit is not None and config.batch_size > limit:
            config = dataclasses.replace(config, batch_size=limit)
        while True:
            try:
                return self._compute_once(stage, config, model, relation, shot, ident, ups, progress)
            except torch.OutOfMemoryError:
                pass  # (the tensors of the failed try are freed with the exception, before the cache is emptied)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if config.batch_size <= 1:
                raise DeviceMemoryError(f"{stage.name} of {where} does not fit in the device's memory even at batch "
                                        "size 1; use --device cpu, --dtype bfloat16 or a smaller model")
            smaller = max(1, config.batch_size // 2)
            self.notes.append(f"memory: {where}: {stage.name} ran out of device memory at batch size "
                              f"{config.batch_size}; computed at batch size {smaller} (same results)")
            self._batch_limits[(model.model_id, stage.name)] = smaller
            config = dataclasses.replace(config, batch_size=smaller)

    def _compute_once(self, stage: Stage, config, model: ModelHandle, relation: Relation, shot: int,
                      ident: Identity, ups: dict[str, tuple[ResultRecord, Requirement]],
                      progress) -> tuple[ResultRecord, float]:
        lm = model.get() if stage.needs_model else None
        key = (model.model_id, relation.name, shot)
        started = time.perf_counter()
        inp = StageInput(lm, relation, shot, config, {n: ResultReader(self.store, r) for n, (r, _) in ups.items()},
                         progress or (lambda **kw: None))
        with self.store.writer(stage.name, key, stage.tables) as writer:
            gen = stage.compute(inp)
            while True:
                try:
                    part = next(gen)
                except StopIteration as stop:
                    output: StageOutput = stop.value or StageOutput()
                    break
                for table, data in stage.encode(part).items():
                    writer.write(table, data)
            if output.plots:
                writer.write("plots", pa.table({"stage": [stage.name] * len(output.plots),
                                                "name": list(output.plots), "png": list(output.plots.values())},
                                               schema=stage.tables["plots"]))
            seconds = time.perf_counter() - started

            def record(result_id: str, rows: dict[str, int]) -> ResultRecord:
                return ResultRecord(
                    result_id=result_id, stage=stage.name, model=key[0], relation=key[1], shot=shot,
                    input_hash=ident.input_hash, family=ident.family, n_prompts=ident.n_prompts,
                    variants=ident.variants, upstream=tuple((req, r.result_id) for r, req in ups.values()),
                    stage_version=stage.version, code_digest=code_digest(stage), config=hashed_settings(config),
                    seed=getattr(config, "seed", None), max_prompts=config.max_prompts, dtype=model.dtype,
                    model_sha256=model.file_sha256, relation_hash=relation.content_hash(), tables=rows,
                    summary=output.summary, run_id=self.run_id, committed_at=datetime.now(timezone.utc),
                    seconds=round(seconds, 3))

            rec = writer.commit(record)
        self.catalog.add(rec)
        return rec, seconds

    # -- after a command -------------------------------------------------------------------------
    def stale_notes(self) -> list[str]:
        """One line per selected result of a touched partition that is stale, with what to run."""
        out = []
        for (key, stage), rid in sorted(self.catalog.selection.items()):
            if key not in self.touched:
                continue
            status, why = self.catalog.status(self.catalog.results[rid])
            if status == "stale":
                out.append(f"stale: {stage} of {key[0]}/{key[1]}/shot={key[2]} — {why}; "
                           f"`factrecall {STAGES[stage].command}` recomputes it")
        return out


def run_stage(store: Store | Path | str, stage: str, lm: LoadedModel, relation: Relation, shot: int, config,
              run_id: str = "run", force: bool = False) -> Outcome:
    """One stage for one partition with an already loaded model, without Prefect (tests, benchmarks,
    notebooks): the same runner as the commands."""
    store = store if isinstance(store, Store) else Store(store)
    with store.writing():
        return Runner(store, run_id).run(stage, config, ModelHandle(lm.model_id, loaded=lm), relation, shot,
                                         force=force)


pin_code()  # at import, in every process that runs stages (a command, a Dask worker): the code just imported
