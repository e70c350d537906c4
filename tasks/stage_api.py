"""What a stage's compute receives and returns; the settings every stage shares.

A stage's ``compute(inp: StageInput)`` is a generator: it yields parts (objects its table encoder in
``storage`` turns into rows; a capture yields one per batch, so memory stays bounded) and returns a
``StageOutput`` (a JSON-able summary and PNG plots). It never touches the store: the results it builds
on come as ``inp.upstream[stage]``, readers of the exact upstream result the runner chose.

Config classes are frozen dataclasses whose fields carry their CLI help in ``metadata``:
``help`` (text), ``min``/``max`` (CLI bounds), ``hashed`` (False for fields that change speed, not
results: left out of the result's identity), ``cli`` (False: not a command-line option). Their defaults
are the project's defaults: nothing else restates them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import pyarrow as pa

__all__ = ["Rows", "StageConfig", "StageInput", "StageOutput", "StatsConfig", "Upstream", "hashed_settings", "option"]


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           hashed: bool = True, cli: bool = True) -> Any:
    """A config field with its CLI help and bounds (see module docstring)."""
    return field(default=default, metadata={"help": help, "min": min, "max": max, "hashed": hashed, "cli": cli})


@dataclass(frozen=True)
class StageConfig:
    """Settings every stage has."""

    seed: int = option(0, "Seed for demonstrations, corruptions, splits and bootstrap resamples.")
    max_prompts: int | None = option(None, "Use only the first N prompts of each relation (default: all).", min=1)
    batch_size: int = option(16, "Prompts per forward pass (bounds memory; does not change results).", min=1,
                             hashed=False)


@dataclass(frozen=True)
class StatsConfig(StageConfig):
    """Settings of the analysis stages (they report bootstrap intervals)."""

    n_boot: int = option(1000, "Bootstrap resamples for every interval.", min=10)


def hashed_settings(config) -> dict:
    """The config's fields that decide results (``hashed`` metadata true), as a dict."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("hashed", True)}


class Upstream(Protocol):
    """A committed upstream result, as the runner hands it to a stage."""

    result_id: str
    summary: dict
    tables: dict[str, int]  # table -> rows the result wrote (a table it wrote no rows to is absent)

    def read(self, table: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        """``table``'s rows of this result (pyarrow DNF ``filters``, e.g. [("prompt_id", "<", 60)])."""


@dataclass
class StageInput:
    lm: Any  # tasks.models.LoadedModel
    relation: Any  # tasks.relations.Relation
    shot: int
    config: Any
    upstream: dict[str, Upstream]
    progress: Callable[..., None] = lambda **kw: None  # progress(total=n) once, then progress(advance=k)

    @property
    def title(self) -> str:
        return f"{self.lm.model_id} · {self.relation.name} · shot {self.shot}"


@dataclass
class StageOutput:
    summary: dict = field(default_factory=dict)  # JSON-able; stored with the result, shown by the CLI
    plots: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes


@dataclass
class Rows:
    """A part made of named tables' rows: table -> list of row dicts, or a dict of equal-length columns
    (numpy arrays, lists or tensors). The stage's table schemas in ``storage`` give them their types."""

    tables: dict[str, list[dict] | dict[str, Any]]
