"""Column types and array builders shared by the stages' table encoders.

Types are spelt as Delta Lake stores them, so a batch needs no cast on its way into a table: a list's
element field is named ``element``; a d_model vector is ``list<element: float>`` of length d (Delta has no
fixed-size list type; the encoders always write exactly d values).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["VECTOR", "ci", "encode_rows", "field", "list_of", "vectors", "table_from_columns"]


def list_of(t: pa.DataType) -> pa.DataType:
    """A list of ``t`` with Delta's element name."""
    return pa.list_(pa.field("element", t))


#: A d_model vector (float32), one per row.
VECTOR = list_of(pa.float32())


def field(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


def ci(name: str) -> list[pa.Field]:
    """A mean with its bootstrap 95% interval: ``name``, ``name_lo``, ``name_hi``."""
    return [field(name, pa.float64()), field(f"{name}_lo", pa.float64()), field(f"{name}_hi", pa.float64())]


def vectors(values, d: int) -> pa.ListArray:
    """``[n, d]`` floats (numpy or torch) as n vectors of length d."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    n = flat.size // d
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), pa.array(flat),
                                    type=VECTOR)


def table_from_columns(schema: pa.Schema, columns: dict, n: int) -> pa.Table:
    """A table of ``schema`` from ``columns`` (name -> values; missing or None -> all null)."""
    arrays = []
    for f in schema:
        v = columns.get(f.name)
        if v is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(v, (pa.Array, pa.ChunkedArray)):
            arrays.append(v if v.type == f.type else v.cast(f.type))
        else:
            if hasattr(v, "detach"):
                v = v.detach().cpu().numpy()
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def encode_rows(schemas: dict[str, pa.Schema], tables: dict) -> dict[str, pa.Table]:
    """Tables from a ``Rows`` part's ``tables`` (row dicts or columns), typed by ``schemas``."""
    out = {}
    for name, data in tables.items():
        sch = schemas[name]
        if isinstance(data, list):
            out[name] = pa.Table.from_pylist([{k: row.get(k) for k in sch.names} for row in data], schema=sch)
        else:
            n = len(next(iter(v for v in data.values() if v is not None)))
            out[name] = table_from_columns(sch, data, n)
    return out
