"""Writing one result: its tables stream into Parquet files, then commit (docs/METHOD.md §8)."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from . import delta
from .catalog import Key, ResultRecord
from .location import arrow_target
from .parquet import parquet_options

if TYPE_CHECKING:
    from .store import Store

__all__ = ["PARTITION_BY", "ResultWriter", "SchemaMismatchError", "check_id", "data_schema"]

#: Partition columns of every data table (their values live in the log, not in the files).
PARTITION_BY: tuple[str, ...] = ("model", "relation", "shot", "result_id")
#: Table properties: time travel lasts until `factrecall gc` (no automatic log clean-up).
TABLE_CONFIG = {"delta.enableExpiredLogCleanup": "false"}
_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class SchemaMismatchError(ValueError):
    """A batch's schema differs from the schema its table declares."""


def check_id(what: str, value: str) -> str:
    """A partition value: letters, digits, '_', '.', '-' (it becomes a folder name)."""
    if not isinstance(value, str) or not value or not set(value) <= _ID_CHARS or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: must match [A-Za-z0-9_.-]+ (and not be '.' or '..')")
    return value


class ResultWriter:
    """Streams one result's tables into Parquet files; ``commit`` makes them a result (see module docstring).

    ``write(table, batch)`` appends a row group to the table's file of this result. Each table's file is
    written by its own thread (Parquet encoding releases the GIL), so the tables of a batch are written
    side by side and overlap the next batch's compute; at most one batch per table waits, which keeps
    memory bounded. Leaving the ``with`` block without ``commit`` (or with an exception) deletes the
    files: nothing becomes visible.
    """

    def __init__(self, store: Store, stage: str, key: Key, schemas: dict[str, pa.Schema]) -> None:
        self.store, self.stage, self.key = store, stage, key
        model, relation, shot = key
        check_id("model", model)
        check_id("relation", relation)
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 0:
            raise ValueError(f"invalid shot {shot!r}: must be a non-negative int")
        self.result_id = uuid.uuid4().hex[:16]
        self.schemas = {t: delta.delta_schema(s) for t, s in schemas.items()}
        self.partition = {"model": model, "relation": relation, "shot": str(shot), "result_id": self.result_id}
        self._dir = "/".join(f"{k}={v}" for k, v in self.partition.items())
        self._writers: dict[str, tuple[pq.ParquetWriter, str]] = {}
        self._threads: dict[str, ThreadPoolExecutor] = {}
        self._pending: dict[str, Future] = {}
        self.rows: dict[str, int] = {}
        self._state = "open"

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._state == "open":
            self.abort()

    def write(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        if self._state != "open":
            raise RuntimeError(f"result {self.result_id} is {self._state}; cannot write")
        if table not in self.schemas:
            raise ValueError(f"stage {self.stage} writes no table {table!r}; it writes {sorted(self.schemas)}")
        want = self.schemas[table]
        if not batch.schema.equals(want, check_metadata=False):
            try:
                batch = batch.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise SchemaMismatchError(f"{table}: batch schema differs from the table's\nexpected:\n{want}\n"
                                          f"got:\n{batch.schema}") from exc
        if table not in self._writers:
            rel = f"{self._dir}/part-{uuid.uuid4().hex}.parquet"
            path = self.store.table_dir(table) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            where, fs = arrow_target(path)
            self._writers[table] = (pq.ParquetWriter(where, want, filesystem=fs, **parquet_options(want)), rel)
            self._threads[table] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{table}")
            self.rows[table] = 0
        if table in self._pending:
            self._pending.pop(table).result()  # the previous batch of this table is written (or raises)
        writer, _ = self._writers[table]
        data = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._pending[table] = self._threads[table].submit(writer.write_table, data)
        self.rows[table] += batch.num_rows

    def _close(self) -> None:
        """Wait for every pending write, close the files and the threads; raises the first write error."""
        error = None
        for table, future in list(self._pending.items()):
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after every file is closed
                error = error or exc
        self._pending.clear()
        for writer, _ in self._writers.values():
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001
                error = error or exc
        for pool in self._threads.values():
            pool.shutdown(wait=True)
        self._threads.clear()
        if error is not None:
            raise error

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._close()
        except Exception:  # noqa: BLE001 - the files are deleted anyway
            pass
        for table, (_, rel) in self._writers.items():
            (self.store.table_dir(table) / rel).unlink(missing_ok=True)

    def commit(self, make_record) -> ResultRecord:
        """Commit every table's file, then the record ``make_record(result_id, rows)`` (the commit point)."""
        if self._state != "open":
            raise RuntimeError(f"result {self.result_id} is {self._state}; cannot commit")
        self._close()
        self._state = "committing"
        try:
            rec = make_record(self.result_id, dict(self.rows))
            # The tables are independent transactions: commit them side by side (delta-rs releases the GIL).
            with ThreadPoolExecutor(max_workers=min(8, len(self._writers) or 1)) as pool:
                done = [pool.submit(delta.commit_files, self.store.table_dir(table), data_schema(self.schemas[table]),
                                    PARTITION_BY, [(rel, self.partition)], configuration=TABLE_CONFIG)
                        for table, (_, rel) in sorted(self._writers.items())]
                for future in done:
                    future.result()
            self.store.add_result(rec)
            self._state = "committed"
            return rec
        finally:
            if self._state != "committed":
                self._state = "aborted"  # committed table files without a record stay invisible; gc removes them


def data_schema(file_schema: pa.Schema) -> pa.Schema:
    """A data table's full schema: the partition columns, then the file's columns."""
    return pa.schema([pa.field("model", pa.string()), pa.field("relation", pa.string()),
                      pa.field("shot", pa.int32()), pa.field("result_id", pa.string()),
                      *delta.delta_schema(file_schema)])
