"""Hive-partitioned Parquet store with atomic, replace-on-rerun partitions (METHOD.md §8).

Layout under ``root``::

    <table>/model=<m>/relation=<r>/shot=<k>/part-0.parquet     partitioned tables (schema.TABLES)
    <table>/model=<m>/part-0.parquet                           per-model tables (model_info)
    runs/run_id=<id>/part-0.parquet                            one manifest row per run
    _commits/model=<m>/relation=<r>/shot=<k>/<stage>.json      commit record of a partition's stage
    _staging/<uuid>/<table>/part-0.parquet                     partitions being written
    _trash/<uuid>/                                             replaced partitions being deleted

A partition is visible (to ``is_committed`` and the SQL views) only when its commit record exists
and lists the table. A commit deletes the old record first, swaps each table's directory in with
``os.rename`` and writes the new record last, so a crash at any point leaves either the old
partition invisible-but-untouched or the new one complete. A rerun replaces a partition wholly.

Writers hold an ``flock`` on ``_staging/<uuid>.lock`` while alive; ``Store()`` deletes only the
staging/trash folders whose lock is free (their writer died), so concurrent writers are safe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

try:  # POSIX advisory locks; without them every leftover is treated as dead.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = ["PartitionKey", "Store", "PartitionWriter", "SchemaMismatchError"]

_VALUE_RE = re.compile(r"[A-Za-z0-9_.-]+")
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_RESERVED_TABLES = {"runs", "_commits", "_staging", "_trash"}
_PART = "part-0.parquet"
_COMPRESSION = "zstd"


class SchemaMismatchError(ValueError):
    """A batch's schema differs from the schema fixed by the table's first batch."""


def _check_value(what: str, value: str) -> str:
    if not isinstance(value, str) or not _VALUE_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: must match [A-Za-z0-9_.-]+ (and not be '.' or '..')")
    return value


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table) or table in _RESERVED_TABLES:
        raise ValueError(
            f"invalid table name {table!r}: must match [A-Za-z][A-Za-z0-9_]* and not be one of "
            f"{sorted(_RESERVED_TABLES)}"
        )
    return table


@dataclass(frozen=True)
class PartitionKey:
    """One partition: (model, relation, shot); values are checked on construction."""

    model: str
    relation: str
    shot: int

    def __post_init__(self) -> None:
        _check_value("model", self.model)
        _check_value("relation", self.relation)
        if isinstance(self.shot, bool) or not isinstance(self.shot, int) or self.shot < 0:
            raise ValueError(f"invalid shot {self.shot!r}: must be a non-negative int")

    def path(self) -> str:
        """Relative Hive path ``model=<m>/relation=<r>/shot=<k>``."""
        return f"model={self.model}/relation={self.relation}/shot={self.shot}"


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat()


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options: dictionary-encode only strings (floats never repeat), byte-stream-split
    floats (activations compress better), fast zstd. Halves write time on activation tables."""
    strings, floats = [], []
    for f in schema:
        t, leaf = f.type, f.name
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
            t, leaf = t.value_type, f"{f.name}.list.element"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            strings.append(leaf)
        elif pa.types.is_floating(t):
            floats.append(leaf)
    return dict(compression=_COMPRESSION, compression_level=1, use_dictionary=strings or False,
                use_byte_stream_split=floats or False)


def _write_parquet_atomic(path: Path, data: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(data, tmp, **parquet_options(data.schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lock_free(lock_path: Path) -> bool:
    """True when no live process holds ``lock_path`` (or it does not exist)."""
    if fcntl is None or not lock_path.exists():
        return True
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the probe lock
    return True


class Store:
    """A store rooted at ``root``; creating one removes leftovers of crashed writers."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cleanup()

    # -- housekeeping ------------------------------------------------------------------------
    @property
    def _staging(self) -> Path:
        return self.root / "_staging"

    @property
    def _trash(self) -> Path:
        return self.root / "_trash"

    def _cleanup(self) -> None:
        """Delete staging/trash folders whose writer is no longer alive."""
        for area in (self._staging, self._trash):
            if not area.is_dir():
                continue
            for entry in list(area.iterdir()):
                name = entry.name
                if name.endswith(".lock"):
                    continue
                probe = entry if name.endswith(".lock.tmp") else self._staging / f"{name}.lock"
                if _lock_free(probe):
                    _rm(entry)
        if self._staging.is_dir():
            for lock in list(self._staging.glob("*.lock")):
                if not (self._staging / lock.name[: -len(".lock")]).exists() and _lock_free(lock):
                    lock.unlink(missing_ok=True)

    # -- commit records ----------------------------------------------------------------------
    def _commit_path(self, key: PartitionKey, stage: str = "capture") -> Path:
        return self.root / "_commits" / key.path() / f"{_check_table(stage)}.json"

    def _read_commit(self, key: PartitionKey, stage: str = "capture") -> dict | None:
        try:
            return json.loads(self._commit_path(key, stage).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def partition_dir(self, table: str, key: PartitionKey) -> Path:
        """Directory of ``table``'s data for ``key``."""
        return self.root / _check_table(table) / key.path()

    def read(self, table: str, key: PartitionKey, columns: list[str] | None = None, filters=None) -> pa.Table:
        """``table``'s committed data for ``key`` (pyarrow ``filters`` in DNF, e.g. [("layer", ">=", 3)])."""
        stage = next((r for r in (self._read_commit(key, s) for s in self._stages(key)) if r
                      and table in r.get("tables", [])), None)
        if stage is None:
            raise FileNotFoundError(f"no committed {table!r} for {key.path()}; run the stage that writes it first")
        return pq.read_table(self.partition_dir(table, key) / _PART, columns=columns, filters=filters)

    def commit_record(self, key: PartitionKey, stage: str = "capture") -> dict | None:
        """The commit record of ``key``'s ``stage`` (input hash, run id, tables, summary), or None."""
        return self._read_commit(key, stage)

    def _stages(self, key: PartitionKey) -> list[str]:
        folder = self.root / "_commits" / key.path()
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def is_committed(self, key: PartitionKey, input_hash: str, stage: str = "capture") -> bool:
        """True when ``key``'s ``stage`` was committed with ``input_hash`` and all its tables' files exist.

        A stage ("capture", "heads", ...) is an independent set of tables of the same partition key,
        each with its own commit record, so later analyses never replace the capture's tables.
        """
        rec = self._read_commit(key, stage)
        if rec is None or rec.get("input_hash") != input_hash:
            return False
        return all((self.partition_dir(t, key) / _PART).is_file() for t in rec.get("tables", []))

    def committed(self) -> list[dict]:
        """All commit records, sorted by (model, relation, shot)."""
        recs = []
        for p in (self.root / "_commits").glob("*/*/*/*.json"):
            try:
                recs.append(json.loads(p.read_text(encoding="utf-8")))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
        return sorted(recs, key=lambda r: (r.get("model"), r.get("relation"), r.get("shot"), r.get("stage", "")))

    # -- writing -----------------------------------------------------------------------------
    def open_partition(self, key: PartitionKey, input_hash: str, run_id: str,
                       stage: str = "capture") -> "PartitionWriter":
        """Start writing ``key``'s ``stage`` (use as a context manager; call ``commit`` inside it)."""
        return PartitionWriter(self, key, input_hash, run_id, stage)

    def write_model_table(self, table: str, model: str, data: pa.Table) -> None:
        """Replace per-model ``<table>/model=<model>/part-0.parquet`` atomically."""
        _check_table(table)
        _check_value("model", model)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if "model" in data.column_names:
            bad = set(data.column("model").to_pylist()) - {model}
            if bad:
                raise ValueError(f"{table}: column 'model' holds {sorted(map(str, bad))}, expected only {model!r}")
        _write_parquet_atomic(self.root / table / f"model={model}" / _PART, data)

    def write_run(self, run: dict) -> None:
        """Write one run manifest row; dict/list values are stored as JSON strings."""
        run_id = _check_value("run_id", str(run.get("run_id", "")))
        cols = {}
        for k, v in run.items():
            if isinstance(v, (dict, list, tuple)):
                v = json.dumps(v, sort_keys=True, default=str)
            elif isinstance(v, Path):
                v = str(v)
            arr = pa.array([v])
            if pa.types.is_null(arr.type):
                arr = pa.array([None], pa.string())
            cols[k] = arr
        _write_parquet_atomic(self.root / "runs" / f"run_id={run_id}" / _PART, pa.table(cols))


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class PartitionWriter:
    """Streams tables of one partition into staging; ``commit`` makes them visible atomically.

    ``write(table, batch)`` appends one row group to ``_staging/<uuid>/<table>/part-0.parquet``
    (nothing is buffered beyond the batch). Leaving the ``with`` block without ``commit`` (or with an
    exception) aborts: staging is deleted and the old partition stays as it was.
    """

    def __init__(self, store: Store, key: PartitionKey, input_hash: str, run_id: str,
                 stage: str = "capture") -> None:
        self.store, self.key, self.stage = store, key, _check_table(stage)
        self.input_hash, self.run_id = str(input_hash), str(run_id)
        self.id = uuid.uuid4().hex
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._state = "open"
        staging_root = store._staging
        staging_root.mkdir(parents=True, exist_ok=True)
        # Create + lock the lock file under a temp name, then publish it: never visible unlocked.
        tmp = staging_root / f".{self.id}.lock.tmp"
        self._lock_fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.replace(tmp, staging_root / f"{self.id}.lock")
        self.staging = staging_root / self.id
        self.staging.mkdir()

    def __enter__(self) -> "PartitionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._state == "open":
            self.abort()

    def write(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        """Append ``batch`` to ``table``; its first batch fixes the table's schema."""
        if self._state != "open":
            raise RuntimeError(f"partition {self.key.path()} is {self._state}; cannot write")
        _check_table(table)
        if not isinstance(batch, (pa.RecordBatch, pa.Table)):
            raise TypeError(f"{table}: expected a pyarrow RecordBatch or Table, got {type(batch).__name__}")
        writer = self._writers.get(table)
        if writer is None:
            clash = [c for c in batch.schema.names if c in ("model", "relation", "shot")]
            if clash:
                raise ValueError(f"{table}: columns {clash} are partition keys (they come from the path)")
            path = self.staging / table / _PART
            path.parent.mkdir(parents=True)
            writer = pq.ParquetWriter(path, batch.schema, **parquet_options(batch.schema))
            self._writers[table], self._schemas[table] = writer, batch.schema
        elif not batch.schema.equals(self._schemas[table], check_metadata=False):
            raise SchemaMismatchError(
                f"{table}: batch schema differs from the table's schema (fixed by its first batch)\n"
                f"expected:\n{self._schemas[table]}\ngot:\n{batch.schema}"
            )
        if isinstance(batch, pa.RecordBatch):
            writer.write_batch(batch)
        else:
            writer.write_table(batch)

    @property
    def tables(self) -> list[str]:
        """Tables written so far."""
        return sorted(self._writers)

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, {}
        for w in writers.values():
            try:
                w.close()
            except Exception:
                pass

    def _release(self) -> None:
        lock = self.store._staging / f"{self.id}.lock"
        shutil.rmtree(self.staging, ignore_errors=True)
        lock.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def abort(self) -> None:
        """Discard everything staged; nothing becomes visible."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._close_writers()
        self._release()

    def commit(self, summary: dict | None = None) -> None:
        """Swap the staged tables into place and write the commit record (see module docstring)."""
        if self._state != "open":
            raise RuntimeError(f"partition {self.key.path()} is {self._state}; cannot commit")
        summary = dict(summary or {})
        tables = self.tables
        record = {
            "model": self.key.model,
            "relation": self.key.relation,
            "shot": self.key.shot,
            "stage": self.stage,
            "input_hash": self.input_hash,
            "run_id": self.run_id,
            "tables": tables,
            "committed_at": _utcnow(),
        }
        clash = sorted(set(summary) & set(record))
        if clash:
            raise ValueError(f"summary keys {clash} are reserved by the commit record")
        record.update(summary)
        json.dumps(record, default=str)  # fail before touching anything if not serialisable
        self._close_writers()
        self._state = "committing"
        store, key = self.store, self.key
        commit_path = store._commit_path(key, self.stage)
        commit_path.parent.mkdir(parents=True, exist_ok=True)
        trash = store._trash / self.id
        lock_fd = os.open(commit_path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one committer per partition at a time
            old = store._read_commit(key, self.stage) or {}
            commit_path.unlink(missing_ok=True)  # from here on the partition is invisible
            for table in sorted(set(tables) | set(old.get("tables", []))):
                dest = store.partition_dir(table, key)
                if dest.exists():
                    (trash / table).parent.mkdir(parents=True, exist_ok=True)
                    os.rename(dest, trash / table)
                if table in tables:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(self.staging / table, dest)
            _write_json_atomic(commit_path, record)
            self._state = "committed"
        finally:
            os.close(lock_fd)
            if self._state != "committed":
                self._state = "aborted"
            shutil.rmtree(trash, ignore_errors=True)
            self._release()
