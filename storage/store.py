"""The store: one Delta Lake table per kind of row, a result catalogue, run manifests (docs/METHOD.md §8).

Layout under ``root``::

    <table>/_delta_log/...                                   one Delta table per kind of row
    <table>/model=<m>/relation=<r>/shot=<k>/result_id=<id>/part-<uuid>.parquet
    _results/                                                one row per committed result (the commit point)
    _selections/                                             append-only log of which result each key shows
    runs/                                                    one manifest row per command run
    _gc.lock                                                 writers share it; `gc` takes it alone

Writing a result (``Store.writer``): its tables stream into Parquet files in their partition folders;
``commit`` adds each table's files in one Delta transaction per table, then appends the result's row to
``_results``. Until that row exists the result is invisible, so a crash at any point leaves orphan
files that `gc` deletes and no partial result. Data tables are append-only: results with other
settings never overwrite each other; which result a key shows is the selection (``storage.catalog``).

Integrity (``Store.check``): every file a table version names must exist with the size the log
records; a result with a missing, truncated or unreadable file is *damaged*: the message names the
file and the partition, the default views leave the result out, and the next run recomputes it.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import delta
from .catalog import RESULTS_SCHEMA, SELECTIONS_SCHEMA, Catalog, Key, ResultRecord
from .integrity import Damage, file_problem, footer_problem, is_gone
from .location import StoreLocation, arrow_target, is_object_store, store_location, unreachable
from .parquet import parquet_options
from .records import RECORDS, RUNS_SCHEMA
from .writer import PARTITION_BY, TABLE_CONFIG, ResultWriter, SchemaMismatchError, check_id

try:  # POSIX advisory locks (gc against writers); without them gc cannot tell and refuses nothing
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = ["Damage", "PARTITION_BY", "ResultWriter", "SchemaMismatchError", "Store", "StoreError", "check_id"]

RESULTS, SELECTIONS, RUNS = "_results", "_selections", "runs"


class StoreError(RuntimeError):
    """A store that cannot be used as asked (unknown run for --as-of, a locked store, ...)."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """A store at ``root`` (a local folder or an object-store URL, ``storage.location``); ``as_of`` (a run id)
    opens it read-only as it was after that run."""

    def __init__(self, root: Path | str, as_of: str | None = None, create: bool = True) -> None:
        self.root: StoreLocation = store_location(root)
        self.as_of = as_of
        self._versions: dict[str, int] | None = None
        self._as_of_finished = None  # when the as-of run finished: `runs` shows the runs up to it
        self._opened: dict = {}
        self.meta_damage: list[Damage] = []  # damaged files of the catalogue and run tables (see `scan`)
        if as_of is not None:
            self._versions = self._run_versions(as_of)
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)

    # -- tables and versions -----------------------------------------------------------------
    def table_dir(self, table: str) -> StoreLocation:
        return self.root / table

    def version_of(self, table: str) -> int | None | bool:
        """The version to read: an int (as of a run), None (latest), or False (did not exist then)."""
        if self._versions is None or table == RUNS:  # runs is read whole and filtered by time (see `scan`)
            return None
        return self._versions.get(table, False)  # record tables too: written before their run's manifest

    def open(self, table: str):
        """The Delta table as this store reads it, or None when it does not exist (then). Opened once per
        ``Store`` object and table: a ``Store`` reads one version of the store."""
        if table not in self._opened:
            version = self.version_of(table)
            try:
                self._opened[table] = None if version is False else delta.open_table(self.table_dir(table), version)
            except delta.TableLogError as exc:
                if version is not None and is_gone(exc):
                    raise StoreError(f"--as-of {self.as_of}: table {table} at that run's version is no longer "
                                     "readable: `factrecall gc` deleted the files of earlier versions") from exc
                raise
        return self._opened[table]

    def preopen(self, tables: Iterable[str]) -> None:
        """Open these tables concurrently (each open replays its log in delta-rs, which releases the GIL);
        ``open`` then returns them. A table that fails to open is left for ``open`` to report."""
        todo = [t for t in tables if t not in self._opened]
        if len(todo) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        def try_open(table):
            try:
                self.open(table)
            except Exception:  # noqa: BLE001 - reported by the caller's own open
                self._opened.pop(table, None)

        with ThreadPoolExecutor(min(8, len(todo))) as pool:
            list(pool.map(try_open, todo))

    def data_tables(self) -> list[str]:
        """Names of the data tables that exist (folders with a transaction log, not the catalogue)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if (p / "_delta_log").is_dir() and not p.name.startswith("_") and p.name not in RECORDS
                      and self.version_of(p.name) is not False)

    def versions(self) -> dict[str, int]:
        """Latest version of every readable table of the store (data, catalogue and run tables)."""
        out = {}
        for p in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if (p / "_delta_log").is_dir():
                try:
                    table = delta.open_table(p)
                except delta.TableLogError:
                    continue  # named by the integrity check of every query
                if table is not None:
                    out[p.name] = table.version()
        return out

    def _run_versions(self, run_id: str) -> dict[str, int]:
        runs = self.scan(RUNS)
        if runs is None:
            raise StoreError(f"--as-of {run_id}: the store at {self.root} has no runs yet")
        ended = runs.filter(pc.is_valid(runs["finished_at"]))  # end rows: the runs that can be read as of
        match = ended.filter(pc.equal(ended["run_id"], run_id))
        if match.num_rows == 0 and pc.any(pc.equal(runs["run_id"], run_id)).as_py():  # a start row only
            raise StoreError(f"--as-of {run_id}: that run did not finish (stopped, crashed or still running), so no "
                             "version of the store was recorded at its end; read as of a finished run, or the latest")
        if match.num_rows == 0:
            recent = ended.sort_by([("started_at", "descending")])["run_id"].to_pylist()[:5]
            raise StoreError(f"--as-of {run_id}: no such run in {self.root}; recent runs: {', '.join(recent)} "
                             "(`factrecall query \"SELECT run_id, kind, started_at FROM runs\"` lists them all)")
        self._as_of_finished = match["finished_at"][0].as_py()
        started = match["started_at"][0].as_py()
        gcs = runs.filter(pc.equal(runs["kind"], "gc"))
        later = [t for t in gcs["started_at"].to_pylist() if started is not None and t is not None and t > started]
        if later:
            raise StoreError(f"--as-of {run_id}: `factrecall gc` ran after that run (at {min(later):%Y-%m-%d %H:%M} "
                             "UTC) and deleted the files of earlier versions; only later runs can be read as of")
        return json.loads(match["versions"][0].as_py() or "{}")

    def _listing(self, table: str) -> dict[str, int] | None:
        """On an object store, every file under ``table``'s prefix with its size, from one listing (the integrity
        check then needs no request per file); None for a local store."""
        root = self.table_dir(table)
        if not is_object_store(root):
            return None
        try:
            infos = root.fs.get_file_info(pafs.FileSelector(root.key, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise unreachable(self.root, exc) from None
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    # -- catalogue ---------------------------------------------------------------------------
    def scan(self, table: str) -> pa.Table | None:
        """A small table (catalogue, runs) whole, as this store version has it; None if it does not exist.
        A damaged file of it is left out and noted in ``meta_damage``; a log that cannot be read is too
        (then the table reads as empty). As of a run, ``runs`` holds the runs up to and including it."""
        try:
            dt = self.open(table)
        except delta.TableLogError as exc:
            self.meta_damage.append(Damage(table, str(self.table_dir(table) / "_delta_log"), {}, f"unreadable: {exc}"))
            return None
        if dt is None:
            return None
        schema = pa.schema(dt.schema().to_arrow())
        good = []
        listing = self._listing(table)
        for f in delta.list_files(dt):
            path = self.table_dir(table) / f.path
            problem = file_problem(path, f.size, listing)
            if problem:
                self.meta_damage.append(Damage(table, str(path), {}, f"{problem}; the rows it held are unknown"))
            else:
                good.append(f)
        try:  # reading every file reads its footer: a corrupt one fails the read, then each is checked alone
            data = delta.dataset(self.table_dir(table), schema, good).to_table()
        except (pa.ArrowException, OSError):
            ok = []
            for f in good:
                path = self.table_dir(table) / f.path
                try:
                    where, fs = arrow_target(path)
                    pq.read_table(where, filesystem=fs)
                    problem = None
                except OSError as exc:
                    if is_object_store(path) and not isinstance(exc, (pa.ArrowException, FileNotFoundError)):
                        raise unreachable(self.root, exc) from None
                    problem = f"unreadable ({' '.join(str(exc).split())[:120]})"
                except pa.ArrowException as exc:
                    problem = f"unreadable ({' '.join(str(exc).split())[:120]})"
                if problem:
                    self.meta_damage.append(Damage(table, str(path), {}, f"{problem}; the rows it held are unknown"))
                else:
                    ok.append(f)
            data = delta.dataset(self.table_dir(table), schema, ok).to_table()
        if table == RUNS and self._as_of_finished is not None:
            # the rows written by then: a run that ended later (runs may overlap) shows its start row, unfinished
            data = data.filter(pc.less_equal(pc.coalesce(data["finished_at"], data["started_at"]),
                                             self._as_of_finished))
        return data

    def catalog(self, damage: list[Damage] | None = None) -> Catalog:
        """Results and selections of this store version; ``damage`` (from `check`) marks damaged results."""
        if self.as_of is None:
            self._opened.clear()
        return self._catalog(self.scan(RESULTS), self.scan(SELECTIONS), damage)

    @staticmethod
    def _catalog(results, selections, damage) -> Catalog:
        damaged: dict[str, str] = {}
        for d in damage or []:
            if d.result_id and d.result_id not in damaged:
                damaged[d.result_id] = d.message()
        return Catalog.from_tables(results, selections, damaged)

    def check(self, tables: Iterable[str] | None = None) -> tuple[dict[str, list[delta.DataFile]], list[Damage]]:
        """Every data table's intact files at this store version, and the damaged ones (see module docstring)."""
        files: dict[str, list[delta.DataFile]] = {}
        damage: list[Damage] = []
        names = list(tables if tables is not None else self.data_tables())
        self.preopen(names)
        for name in names:
            try:
                table = self.open(name)
            except delta.TableLogError as exc:
                damage.append(Damage(name, str(self.table_dir(name) / "_delta_log"), {}, f"unreadable: {exc}"))
                continue
            if table is None:
                continue
            good = []
            listing = self._listing(name)
            for f in delta.list_files(table):
                problem = file_problem(self.table_dir(name) / f.path, f.size, listing)
                if problem:
                    damage.append(Damage(name, str(self.table_dir(name) / f.path), f.partition, problem))
                else:
                    good.append(f)
            files[name] = good
        return files, damage

    def record_rows(self, files: dict[str, list[delta.DataFile]], catalog: Catalog) -> list[Damage]:
        """Results whose tables hold fewer rows than their record says (a file removed from a table)."""
        counted: dict[tuple[str, str], int] = {}
        for table, fs in files.items():
            for f in fs:
                k = (table, f.partition.get("result_id"))
                counted[k] = counted.get(k, 0) + (f.num_records or 0)
        out = []
        for rec in catalog.results.values():
            for table, rows in rec.tables.items():
                have = counted.get((table, rec.result_id), 0)
                if rows and have != rows and rec.result_id not in catalog.damaged:
                    part = {"model": rec.model, "relation": rec.relation, "shot": rec.shot, "result_id": rec.result_id}
                    out.append(Damage(table, f"{table}/…/result_id={rec.result_id}", part,
                                      f"incomplete: {have} of its {rows} rows are in the table"))
        return out

    def verified_catalog(self, extra: list[Damage] = ()) -> tuple[Catalog, dict[str, list[delta.DataFile]], list[Damage]]:
        """The catalogue with every damaged result marked, the intact data files, and the damage found
        (``extra``: damage found otherwise, e.g. a file a query could not read). The catalogue is read
        before the data tables, so a result committed meanwhile by another process is simply not seen
        (its files are already in the data tables when its record is)."""
        if self.as_of is None:  # the latest versions, now (this object may have written since)
            self._opened.clear()
            self.meta_damage = []
        self.preopen((RESULTS, SELECTIONS))
        results, selections = self.scan(RESULTS), self.scan(SELECTIONS)
        files, damage = self.check()
        damage = list(self.meta_damage) + damage + list(extra)
        bad = {(d.table, d.path) for d in extra}
        files = {t: [f for f in fs if (t, str(self.table_dir(t) / f.path)) not in bad] for t, fs in files.items()}
        catalog = self._catalog(results, selections, damage)
        more = self.record_rows(files, catalog)
        if more:
            damage += more
            catalog = self._catalog(results, selections, damage)
        return catalog, files, damage

    def footer_problem(self, rec: ResultRecord) -> str | None:
        """Read the Parquet footer of every file of ``rec`` (a check worth its cost before reusing a result:
        a file of the right size can still be corrupt); the first problem found, with the file, or None."""
        for table in rec.tables:
            version = self.version_of(table)
            dt = None if version is False else delta.open_table(self.table_dir(table), version)
            for f in delta.list_files(dt) if dt is not None else []:
                if f.partition.get("result_id") == rec.result_id:
                    path = self.table_dir(table) / f.path
                    problem = file_problem(path, f.size) or footer_problem(path)
                    if problem:
                        return Damage(table, str(path), f.partition, problem).message()
        return None

    # -- reading results -----------------------------------------------------------------------
    def read(self, rec: ResultRecord, table: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        """``table``'s rows of result ``rec`` (pyarrow ``filters`` in DNF, e.g. [("layer", ">=", 3)]). Reads
        the table's latest version (or the ``as_of`` one): a result committed since this ``Store`` was
        opened is found."""
        version = self.version_of(table)
        dt = None if version is False else delta.open_table(self.table_dir(table), version)
        mine = [f for f in delta.list_files(dt) if f.partition.get("result_id") == rec.result_id] if dt else []
        if not mine:
            raise StoreError(f"result {rec.result_id} ({rec.stage} of {rec.model}/{rec.relation}/shot={rec.shot}) "
                             f"has no {table!r} rows in the store")
        for f in mine:
            problem = file_problem(self.table_dir(table) / f.path, f.size)
            if problem:
                raise StoreError(f"{table} file {self.table_dir(table) / f.path} is {problem}")
        data = delta.dataset(self.table_dir(table), pa.schema(dt.schema().to_arrow()), mine)
        expr = pq.filters_to_expression(filters) if filters else None
        return data.to_table(columns=columns, filter=expr)

    # -- writing -------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self.as_of is not None:
            raise StoreError(f"the store opened --as-of {self.as_of} is read-only")

    @contextmanager
    def writing(self):
        """Hold the store's shared writer lock (``gc`` waits for no writer). An object store has no such lock:
        its writers coordinate through Delta Lake's commits alone (``gc`` refuses to run there)."""
        self._require_writable()
        if is_object_store(self.root):
            yield self
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "_gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield self
        finally:
            os.close(fd)

    def writer(self, stage: str, key: Key, schemas: dict[str, pa.Schema]) -> "ResultWriter":
        """Start writing one result of ``stage`` for ``key`` into tables with ``schemas`` (file schemas,
        without partition columns); use as a context manager and call ``commit`` inside it."""
        self._require_writable()
        return ResultWriter(self, stage, key, schemas)

    def _append(self, table: str, schema: pa.Schema, rows: list[dict]) -> None:
        """Append ``rows`` to an unpartitioned table as one file and one transaction."""
        path = self.table_dir(table)
        path.mkdir(parents=True, exist_ok=True)
        rel = f"part-{uuid.uuid4().hex}.parquet"
        data = pa.Table.from_pylist(rows, schema=delta.delta_schema(schema))
        where, fs = arrow_target(path / rel)
        try:
            pq.write_table(data, where, filesystem=fs, **parquet_options(data.schema))
        except BaseException:
            (path / rel).unlink(missing_ok=True)
            raise
        # From here the file stays even if the commit fails or is interrupted: the commit may have landed
        # (an interrupt is raised only once delta-rs returns). An uncommitted file is an orphan gc deletes.
        delta.commit_files(path, schema, (), [(rel, {})], configuration=TABLE_CONFIG)

    def add_result(self, rec: ResultRecord) -> None:
        self._require_writable()
        self._append(RESULTS, RESULTS_SCHEMA, [rec.to_row()])

    def select(self, recs: list[ResultRecord], run_id: str) -> None:
        """Append selection events: each result becomes the one its key and stage show."""
        self._require_writable()
        if recs:
            now = _utcnow()
            self._append(SELECTIONS, SELECTIONS_SCHEMA, [
                {"model": r.model, "relation": r.relation, "shot": r.shot, "stage": r.stage,
                 "result_id": r.result_id, "run_id": run_id, "selected_at": now} for r in recs])

    def append_records(self, table: str, rows: list[dict]) -> None:
        """Append ``rows`` to the record table ``table`` (``storage.records``) in one transaction; call before
        ``write_run`` of the same run, so that the run's recorded versions include them."""
        self._require_writable()
        if rows:
            self._append(table, RECORDS[table], rows)

    def compact(self, min_files: int = 64) -> list[str]:
        """Rewrite each catalogue and record table of at least ``min_files`` files (they grow by one small
        file per row, and reading them dominates a query's start-up) into one file, in one transaction each;
        earlier versions stay readable until `gc`. Best effort: a table another writer changed meanwhile is
        left for next time. Returns the tables compacted."""
        self._require_writable()
        done = []
        for table in (RESULTS, SELECTIONS, *RECORDS):
            if not (self.table_dir(table) / "_delta_log").is_dir():
                continue
            try:
                dt = delta.open_table(self.table_dir(table))
                if dt is not None and len(dt.file_uris()) >= min_files:
                    dt.optimize.compact()
                    done.append(table)
            except Exception:  # noqa: BLE001 - a concurrent commit or a damaged table: reading is unaffected
                continue
        return done

    def write_run(self, manifest: dict) -> None:
        """Append one run manifest; dict/list values are stored as JSON, with the table versions now (null on a
        start row). A sweep writes two rows: at its start (``finished_at`` null: the code and settings of a run
        that may never end) and at its end; the ``runs`` view shows each run's latest row."""
        self._require_writable()
        row = {}
        for name in RUNS_SCHEMA.names:
            value = manifest.get(name)
            if isinstance(value, (dict, list, tuple)):
                value = json.dumps(value, sort_keys=True, default=str)
            elif isinstance(value, Path):
                value = str(value)
            row[name] = value
        # the versions a run leaves behind: none yet on a run's start row
        row["versions"] = None if row["finished_at"] is None else json.dumps(self.versions(), sort_keys=True)
        for t in ("started_at", "finished_at"):
            if isinstance(row[t], str):
                row[t] = datetime.fromisoformat(row[t])
        self._append(RUNS, RUNS_SCHEMA, [row])

    # -- garbage collection --------------------------------------------------------------------
    def gc(self, drop_unselected: bool = False) -> dict:
        """Delete what no current version needs: time-travel history, orphan files of crashed writers,
        damaged results (files and records), and (``drop_unselected``) results that no partition shows
        and no shown result was computed from; compact the catalogue and record tables (one small file per
        row otherwise: their reading dominates a query's start-up). Needs no writer: refused while a
        command writes."""
        self._require_writable()
        if is_object_store(self.root):
            raise StoreError(f"gc runs on local stores only: on {self.root} it cannot tell whether another command "
                             "is writing (object stores have no shared lock); copy the store to a folder to compact it")
        fd = os.open(self.root / "_gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise StoreError(f"a factrecall command is writing to {self.root}; run gc when it has finished") from None
            catalog, files, damage = self.verified_catalog()
            keep = set(catalog.results) - set(catalog.damaged)
            if drop_unselected:
                keep = {r.result_id for r in catalog.results.values()
                        if catalog.status(r)[0] in ("current", "stale") or _upstream_of_selected(r, catalog)}
            for table, fs in files.items():
                gone = [f for f in fs if f.partition.get("result_id") not in keep]
                gone += [delta.DataFile(os.path.relpath(d.path, self.table_dir(table)), 0, d.partition, None)
                         for d in damage if d.table == table and d.partition and os.path.isabs(d.path)]
                if gone:
                    dt = delta.open_table(self.table_dir(table))
                    delta.remove_files(self.table_dir(table), pa.schema(dt.schema().to_arrow()), PARTITION_BY, gone)
            dropped = sorted(set(catalog.results) - keep)
            if dropped:  # their records go too: a record without rows would read as damaged
                ids = ", ".join(f"'{rid}'" for rid in dropped)
                delta.open_table(self.table_dir(RESULTS)).delete(f"result_id IN ({ids})")
            self.compact(min_files=2)
            deleted = []
            for p in sorted(self.root.iterdir()):
                if (p / "_delta_log").is_dir():
                    dt = delta.open_table(p)
                    deleted += dt.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True)
            done = {"files_deleted": len(deleted), "results_dropped": len(dropped)}
            now = _utcnow()
            self.write_run({"run_id": now.strftime("%Y%m%dT%H%M%SZ") + "-gc-" + uuid.uuid4().hex[:6], "kind": "gc",
                            "started_at": now, "finished_at": _utcnow(), "config": {"unselected": drop_unselected},
                            "timings": done, "store": str(self.root)})
            return done
        finally:
            os.close(fd)


def _upstream_of_selected(rec: ResultRecord, catalog: Catalog) -> bool:
    for other in catalog.results.values():
        if catalog.status(other)[0] in ("current", "stale") and any(rid == rec.result_id for _, rid in other.upstream):
            return True
    return False


def intact_dataset(store: Store, table: str, files: list[delta.DataFile], result_ids: set[str] | None) -> ds.Dataset | None:
    """A dataset over ``table``'s intact ``files``, only of ``result_ids`` when given."""
    dt = store.open(table)
    if dt is None:
        return None
    chosen = [f for f in files if result_ids is None or f.partition.get("result_id") in result_ids]
    return delta.dataset(store.table_dir(table), pa.schema(dt.schema().to_arrow()), chosen)
