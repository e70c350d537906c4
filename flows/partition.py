"""Capture one (model, relation, shot) partition into the store — plain functions, no Prefect.

The Prefect flow in `sweep.py` wraps these; unit tests call them directly (no Prefect start-up).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from factrecall.storage.store import PartitionKey, Store
from factrecall.tasks.models import LoadedModel
from factrecall.tasks.partition_capture import PartitionStats, capture_partition, unembed_table
from factrecall.tasks.prompts import build_prompts
from factrecall.tasks.relations import Relation
from factrecall.tasks.tokenization import tokenize_prompts
from factrecall.version import code_version


@dataclass(frozen=True)
class CaptureConfig:
    """Everything besides the model and the relation that decides a partition's content."""

    seed: int = 0
    variants: tuple[str, ...] = ("clean",)
    max_prompts: int | None = None
    batch_size: int = 16

    def hashed(self) -> dict:
        out = asdict(self)
        out.pop("batch_size")  # changes speed, not results
        return out


@dataclass(frozen=True)
class StageConfig:
    """What every analysis stage's config holds; stages subclass it with their own fields."""

    seed: int = 0
    max_prompts: int | None = None
    batch_size: int = 16  # changes speed, not results (left out of the input hash)
    n_boot: int = 1000  # bootstrap resamples for intervals

    def capture(self) -> CaptureConfig:
        """The clean-prompt capture the stage reads."""
        return CaptureConfig(seed=self.seed, variants=("clean",), max_prompts=self.max_prompts,
                             batch_size=self.batch_size)


@dataclass
class PartitionResult:
    model: str
    relation: str
    shot: int
    status: str  # "written" | "skipped"
    input_hash: str
    n_prompts: int = 0
    ledger_max_error: float = 0.0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def input_hash(lm: LoadedModel, relation: Relation, shot: int, config: CaptureConfig) -> str:
    """Content hash of a partition's inputs: model file, dataset, config and code version."""
    payload = {
        "model": lm.file_sha256 or lm.source,
        "dtype": str(lm.dtype),
        "relation": relation.content_hash(),
        "shot": shot,
        "config": config.hashed(),
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stage_input_hash(lm: LoadedModel, relation: Relation, shot: int, config, stage: str, **inputs) -> str:
    """Content hash of an analysis stage: the capture it reads, its config (batch size aside: it changes
    speed, not results), the code version, and any further `inputs` (e.g. the head set it builds on)."""
    payload = {"capture": input_hash(lm, relation, shot, config.capture()), "config": asdict(config),
               "code": code_version(), "stage": stage, **inputs}
    payload["config"].pop("batch_size", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_partition(
    store: Store, lm: LoadedModel, relation: Relation, shot: int, config: CaptureConfig, run_id: str,
    progress=None, force: bool = False,
) -> PartitionResult:
    """Write the partition unless the store already holds it for the same input hash.

    `progress(total=n)` is called once, then `progress(advance=k)` per batch.
    """
    key = PartitionKey(lm.model_id, relation.name, shot)
    digest = input_hash(lm, relation, shot, config)
    if not force and store.is_committed(key, digest):
        return PartitionResult(key.model, key.relation, shot, "skipped", digest)
    started = time.perf_counter()
    prompts = build_prompts(relation, shot, config.seed, variants=config.variants, max_prompts=config.max_prompts)
    tokenized = tokenize_prompts(lm.tokenizer, prompts, lm.max_length)
    if progress is not None:
        progress(total=len(tokenized))
    stats = PartitionStats()
    with store.open_partition(key, digest, run_id) as writer:
        for tables in capture_partition(
            lm, tokenized, config.batch_size, stats,
            progress=None if progress is None else (lambda k: progress(advance=k)),
        ):
            for name, table in tables.items():
                writer.write(name, table)
        writer.write("unembed", unembed_table(lm, stats.token_ids))
        seconds = time.perf_counter() - started
        writer.commit({
            "n_prompts": stats.n_prompts,
            "ledger_max_error": stats.ledger_max_error,
            "seconds": round(seconds, 3),
            "seed": config.seed,
            "variants": list(config.variants),
            "code_version": code_version(),
            "model_sha256": lm.file_sha256,
            "relation_hash": relation.content_hash(),
        })
    return PartitionResult(key.model, key.relation, shot, "written", digest, stats.n_prompts,
                           stats.ledger_max_error, seconds)
