"""Helpers for tests that drive stages: drain a compute generator, encode its parts into tables."""

from __future__ import annotations

import pyarrow as pa


def drain(gen) -> tuple[list, object]:
    """All parts a stage's compute yields, and the ``StageOutput`` it returns."""
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            return parts, stop.value


def encoded(stage, parts) -> dict[str, pa.Table]:
    """The tables ``stage``'s encoder makes of ``parts``, each concatenated over the parts."""
    out: dict[str, list] = {}
    for part in parts:
        for name, table in stage.encode(part).items():
            out.setdefault(name, []).append(table)
    return {name: pa.concat_tables(ts) for name, ts in out.items()}
