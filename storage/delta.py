"""Delta Lake tables in a local folder or an object store (``storage.location``): commit streamed Parquet files,
list a version's files, build PyArrow datasets over chosen files (docs/METHOD.md §8).

Every data file is written by our own Parquet writer straight into the table's directory, under its
partition path, and becomes part of the table only when the transaction that adds it is committed
(`commit_files`): a file that no commit names is invisible and `gc` deletes it. Files never hold the
partition columns; their values live in the transaction log.

Reads never go through delta-rs' own file handler (`DeltaStorageHandler`): with deltalake 1.6.6 a
process that read through it aborts at exit in about one run in five ("terminate called without an
active exception"). Datasets are built from the log's file list over PyArrow's file system of the location.
A table's ``path`` is a ``pathlib.Path`` or a ``storage.location.ObjectPath``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from .location import arrow_subtree, arrow_target, delta_options

__all__ = [
    "DataFile", "TableLogError", "commit_files", "dataset", "delta_schema", "file_schema", "list_files",
    "open_table", "remove_files", "scan",
]

_COMMIT_RETRIES = 8


class TableLogError(RuntimeError):
    """A table's transaction log cannot be read; the message names the table's folder."""


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as Delta Lake stores it (lists become ``list<element: ...>``, etc.)."""
    return pa.schema(DeltaSchema.from_arrow(schema).to_arrow())


def file_schema(schema: pa.Schema, partition_by: tuple[str, ...]) -> pa.Schema:
    """The schema of a data file: the table's, without the partition columns."""
    return pa.schema([f for f in delta_schema(schema) if f.name not in partition_by])


@dataclass(frozen=True)
class DataFile:
    """One file of a table version: path relative to the table, size, partition values, row count."""

    path: str
    size: int
    partition: dict[str, str | None]
    num_records: int | None


def open_table(path: Path, version: int | None = None) -> DeltaTable | None:
    """The Delta table at ``path`` (at ``version``), or None when no table exists there yet."""
    if not (path / "_delta_log").is_dir():
        return None
    try:
        options = delta_options(path)
        return (DeltaTable(str(path), version=version, storage_options=options) if version is not None
                else DeltaTable(str(path), storage_options=options))
    except TableNotFoundError:
        return None
    except (DeltaError, OSError, ValueError) as exc:
        raise TableLogError(f"the transaction log of table {path.name} ({path / '_delta_log'}) cannot be read: "
                            f"{str(exc).splitlines()[0]}") from exc


def list_files(table: DeltaTable) -> list[DataFile]:
    """The files of ``table``'s loaded version."""
    actions = pa.table(table.get_add_actions(flatten=True))
    cols = actions.column_names
    parts = [c for c in cols if c.startswith("partition.")]
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    records = actions.column("num_records").to_pylist() if "num_records" in cols else [None] * len(paths)
    values = {c[len("partition."):]: actions.column(c).to_pylist() for c in parts}
    return [DataFile(p, s, {k: v[i] for k, v in values.items()}, r)
            for i, (p, s, r) in enumerate(zip(paths, sizes, records))]


def _partition_expression(schema: pa.Schema, partition: dict[str, str | None]) -> ds.Expression:
    expr = None
    for name, raw in partition.items():
        typ = schema.field(name).type
        term = (ds.field(name).is_null() if raw is None
                else ds.field(name) == pa.scalar(raw).cast(typ))
        expr = term if expr is None else expr & term
    return expr if expr is not None else ds.scalar(True)


def dataset(path: Path, schema: pa.Schema, files: list[DataFile]) -> ds.Dataset:
    """A PyArrow dataset over ``files`` of the table at ``path`` (partition columns from the log)."""
    schema = delta_schema(schema)
    fmt = ds.ParquetFileFormat()
    fs = arrow_subtree(path)
    fragments = [fmt.make_fragment(f.path, filesystem=fs, partition_expression=_partition_expression(schema, f.partition))
                 for f in files]
    return ds.FileSystemDataset(fragments, schema, fmt, fs)


def scan(path: Path, version: int | None = None) -> pa.Table | None:
    """The whole table (small tables: catalogues and run manifests), or None when it does not exist."""
    table = open_table(path, version)
    if table is None:
        return None
    schema = pa.schema(table.schema().to_arrow())
    return dataset(path, schema, list_files(table)).to_table()


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    return value


def _stats(meta: pq.FileMetaData, schema: pa.Schema) -> str:
    """Delta statistics (row count, min, max, null count per top-level primitive column) of a file."""
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    names = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for field in schema:
        i = names.get(field.name)
        if i is None:  # nested column: no statistics kept
            continue
        lo = hi = None
        count = 0
        ok = True
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(i).statistics
            if st is None or not st.has_min_max or st.null_count is None:
                ok = False
                break
            count += st.null_count
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        if not ok:
            continue
        nulls[field.name] = count
        lo, hi = _json_value(lo), _json_value(hi)
        if lo is not None and hi is not None and not pa.types.is_timestamp(field.type):
            mins[field.name], maxs[field.name] = lo, hi
    return json.dumps({"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
                      default=str)


def _add_action(path: Path, relative: str, partition: dict[str, str], schema: pa.Schema) -> AddAction:
    where, fs = arrow_target(path / relative)
    meta = pq.read_metadata(where, filesystem=fs)
    return AddAction(relative, (path / relative).stat().st_size, dict(partition), int(time.time() * 1000), True,
                     _stats(meta, schema))


def _ensure_columns(table: DeltaTable, schema: pa.Schema) -> None:
    """Add the columns of ``schema`` that the table lacks (a stage that gained a column)."""
    have = set(pa.schema(table.schema().to_arrow()).names)
    missing = [f for f in schema if f.name not in have]
    if missing:
        table.alter.add_columns(DeltaSchema.from_arrow(pa.schema(missing)).fields)


_WRITE_TABLES: dict[str, DeltaTable] = {}  # tables this process commits to, kept open between commits


def _table_for_write(path: Path) -> DeltaTable | None:
    """The table at ``path`` brought up to date (cached: re-reading a long log for every commit is slow)."""
    key = str(path)
    table = _WRITE_TABLES.get(key)
    if table is None or not (path / "_delta_log").is_dir():
        table = open_table(path)
        if table is None:
            _WRITE_TABLES.pop(key, None)
            return None
        _WRITE_TABLES[key] = table
    else:
        table.update_incremental()
    return table


def commit_files(path: Path, schema: pa.Schema, partition_by: tuple[str, ...],
                 files: list[tuple[str, dict[str, str]]], configuration: dict[str, str] | None = None) -> None:
    """Add ``files`` (paths relative to ``path``, already written, with their partition values) to the
    table in one transaction, creating the table on first use.

    Concurrent committers are safe: a lost race for a version is retried on the next one (appends never
    conflict), and two processes creating the same table settle on one. ``configuration`` sets the
    table's properties when this commit creates it.
    """
    schema = delta_schema(schema)
    actions = [_add_action(path, rel, part, schema) for rel, part in files]
    last: Exception | None = None
    for _ in range(_COMMIT_RETRIES):
        try:
            table = _table_for_write(path)
            if table is None:
                create_table_with_add_actions(str(path), DeltaSchema.from_arrow(schema), actions, mode="append",
                                              partition_by=list(partition_by), configuration=configuration,
                                              storage_options=delta_options(path))
            else:
                _ensure_columns(table, schema)
                table.create_write_transaction(actions, "append", schema, partition_by=list(partition_by))
            return
        except (CommitFailedError, DeltaError) as exc:  # lost a race (version or table creation): retry
            _WRITE_TABLES.pop(str(path), None)
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"could not commit to table {path.name} after {_COMMIT_RETRIES} tries: {last}")


def remove_files(path: Path, schema: pa.Schema, partition_by: tuple[str, ...], files: list[DataFile]) -> None:
    """Remove ``files`` from the table in one transaction (they stay on disk, readable by time travel,
    until `vacuum`)."""
    _WRITE_TABLES.pop(str(path), None)
    table = open_table(path)
    now = int(time.time() * 1000)
    actions = [RemoveAction(f.path, True, now, size=f.size,
                            partition_values={k: None if v is None else str(v) for k, v in f.partition.items()})
               for f in files]
    table.create_write_transaction(actions, "append", delta_schema(schema), partition_by=list(partition_by))
