"""Every data table's schema, by name (the stages' table modules declare them; docs/METHOD.md §8).

A data table's rows carry the partition columns ``model``, ``relation``, ``shot`` and ``result_id``
(from the store, not the files) and then the columns below. ``plots`` holds every stage's figures.
"""

from __future__ import annotations

import pyarrow as pa

from . import capture_tables, claims_tables, final_layer_tables, heads_tables, mlp_tables
from .columns import VECTOR, field

__all__ = ["PLOTS_SCHEMA", "SCHEMAS", "schema", "vector_type"]

#: One row per figure of a result: its name and PNG bytes.
PLOTS_SCHEMA = pa.schema([field("stage", pa.string()), field("name", pa.string()), field("png", pa.binary())])

SCHEMAS: dict[str, pa.Schema] = {**capture_tables.SCHEMAS, **heads_tables.SCHEMAS, **mlp_tables.SCHEMAS,
                                 **final_layer_tables.SCHEMAS, **claims_tables.SCHEMAS, "plots": PLOTS_SCHEMA}


def vector_type() -> pa.DataType:
    """The type of a d_model vector column."""
    return VECTOR


def schema(table: str) -> pa.Schema:
    """The file schema of ``table`` (its columns without the partition columns)."""
    try:
        return SCHEMAS[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(SCHEMAS)}") from None
