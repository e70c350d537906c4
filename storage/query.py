"""DuckDB over the store: sandboxed, read-only connections with one view per table (docs/METHOD.md §8).

``open_store(root, as_of=None)`` checks the store's integrity (every file each table's log names must be
there whole), resolves which result each key shows (``storage.catalog``) and returns a ``StoreView``:
an in-memory DuckDB connection whose views are

- ``<table>``: the selected, current results' rows (one coherent result per key and stage; made from the
  templates in ``sql/templates``); a table without rows yet raises "table X is empty: run ... first";
- ``stored.<table>``: every committed, intact result's rows, selected or not;
- ``results``, ``stale``, ``damaged``, ``runs`` and the derived views of ``sql/views``;

plus the damage found (a damaged result is left out; queries over everything else work). The
connection can read the store and nothing else: DuckDB's external access is disabled and its
configuration locked, so COPY, ATTACH, INSTALL/LOAD and file readers fail with a one-line error.

Queries may use DuckDB named parameters (``$model``, ``$relation``, ...): ``query_params(sql)`` lists
them and ``run_query(..., params={"model": "gpt2"})`` binds them (values are strings; a query casts
them where it needs another type, e.g. ``$shot::INTEGER``).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from . import delta
from .catalog import RESULTS_SCHEMA, Catalog
from .location import store_location
from .records import RECORDS
from .store import Damage, Store, StoreError, intact_dataset

__all__ = [
    "QueryError", "StoreView", "connect", "internal_query", "list_named_queries", "named_query", "open_store",
    "query_params",
    "run_query", "view_names",
]

_REF_RE = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)", re.IGNORECASE)
_COMMENT_RE = re.compile(r"--[^\n]*")
# Tokens that may hold a "$": string literals, quoted identifiers, comments, $$-quoted strings; else a
# named parameter.
_PARAM_SCAN_RE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$\$.*?\$\$|\$([A-Za-z_][A-Za-z0-9_]*)",
    re.DOTALL,
)
_FORMATS = ("table", "csv", "json", "parquet")
# No file access beyond the registered store, no spilling to a temp folder (it would outlive the command),
# and no way to change either.
_SANDBOX = {"enable_external_access": False, "temp_directory": "", "lock_configuration": True}
# DuckDB's message when a registered dataset cannot read one of its files.
_FILE_ERROR = re.compile(r"registered as '_(?:current|stored)_(\w+)' failed: (?:\w+: )?(.*?'([^']+\.parquet)'.*)")
_CATALOG_VIEWS = ("results", "stale", "damaged", "runs")


class QueryError(RuntimeError):
    """An SQL error against the store, with DuckDB's message and the available views."""


def _refs(sql: str) -> set[str]:
    """Names used after FROM/JOIN in ``sql`` (comments ignored)."""
    return set(_REF_RE.findall(_COMMENT_RE.sub("", sql)))


def query_params(sql: str) -> list[str]:
    """Named parameters (``$name``) that ``sql`` uses, in order of first use (not those in strings,
    quoted identifiers or comments)."""
    out: list[str] = []
    for m in _PARAM_SCAN_RE.finditer(sql):
        name = m.group(1)
        if name and name not in out:
            out.append(name)
    return out


def _param_syntax(names) -> str:
    return " ".join(f"--param {n}=value" for n in names)


def _check_params(sql: str, params: dict[str, str] | None) -> dict[str, str] | None:
    """Validate ``params`` against the ``$names`` in ``sql``; return what to bind (None if nothing)."""
    needed = query_params(sql)
    params = dict(params or {})
    missing = [n for n in needed if n not in params]
    if missing:
        raise QueryError(
            f"missing query parameter(s): {', '.join(missing)}\n"
            f"hint: this query needs {', '.join('$' + n for n in needed)}; give them as "
            f"{_param_syntax(needed)} (CLI) or params={{...}} (run_query)"
        )
    unknown = sorted(set(params) - set(needed))
    if unknown:
        uses = ", ".join("$" + n for n in needed) or "no parameters"
        raise QueryError(f"unknown query parameter(s): {', '.join(unknown)}; this query uses {uses}")
    bad = [n for n, v in params.items() if not isinstance(v, str)]
    if bad:
        raise QueryError(f"query parameter(s) {', '.join(bad)} must be strings (cast in SQL where needed)")
    return params or None


def _sql_files(kind: str) -> dict[str, str]:
    d = resources.files("factrecall.sql") / kind
    out = {f.name[: -len(".sql")]: f.read_text(encoding="utf-8") for f in d.iterdir() if f.name.endswith(".sql")}
    return dict(sorted(out.items()))


def view_names() -> list[str]:
    """Every view a connection has: the tables' (from the stage registry) and those of ``sql/views``."""
    from factrecall.stages import STAGES

    tables = {t for s in STAGES.values() for t in s.tables}
    return sorted(tables | set(_sql_files("views")))


class SandboxedView:
    """What every read-only view (a store's, published claims') offers over its sandboxed connection ``con``."""

    con: duckdb.DuckDBPyConnection

    def sql(self, text: str, params: dict | None = None):
        return self.con.sql(text, params=params) if params else self.con.sql(text)

    def pl(self, text: str, params: dict | None = None) -> pl.DataFrame:
        """The query's result as a Polars DataFrame."""
        return self.sql(text, params).pl()

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class StoreView(SandboxedView):
    """A sandboxed connection to one store version, and what its integrity check found."""

    con: duckdb.DuckDBPyConnection
    catalog: Catalog
    damage: list[Damage] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # view -> why it is empty

    def warnings(self) -> list[str]:
        """One line per damaged file, saying what becomes of it."""
        out = []
        for d in self.damage:
            if not d.partition:
                what = "its table cannot be used until it is repaired" if d.path.endswith("_delta_log") else \
                    "left out"
            elif self.catalog.selection.get(((d.partition.get("model"), d.partition.get("relation"),
                                              int(d.partition.get("shot", -1))),
                                             getattr(self.catalog.results.get(d.result_id), "stage", None))) \
                    == d.result_id:
                what = "its result is left out of every view; the next run of its stage recomputes it"
            else:
                what = "its result (not shown by any view) is left out; `factrecall gc` removes it"
            out.append(f"damaged: {d.message()}; {what}")
        return out


def _results_table(catalog: Catalog) -> pa.Table:
    rows = []
    for rec in catalog.results.values():
        status, why = catalog.status(rec)
        row = rec.to_row()
        row |= {"status": status, "status_reason": why}
        rows.append(row)
    schema = RESULTS_SCHEMA.append(pa.field("status", pa.string())).append(pa.field("status_reason", pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def _upstream_table(catalog: Catalog) -> pa.Table:
    ids, caps = [], []
    for rec in catalog.results.values():
        ids.append(rec.result_id)
        caps.append(rec.result_id if rec.stage == "capture"
                    else next((rid for req, rid in rec.upstream if req.stage == "capture"), None))
    return pa.table({"result_id": pa.array(ids, pa.string()), "capture_id": pa.array(caps, pa.string())})


def _damaged_table(damage: list[Damage]) -> pa.Table:
    return pa.table({
        "table_name": pa.array([d.table for d in damage], pa.string()),
        "file": pa.array([d.path for d in damage], pa.string()),
        "model": pa.array([d.partition.get("model") for d in damage], pa.string()),
        "relation": pa.array([d.partition.get("relation") for d in damage], pa.string()),
        "shot": pa.array([None if d.partition.get("shot") is None else int(d.partition["shot"]) for d in damage],
                         pa.int32()),
        "result_id": pa.array([d.result_id for d in damage], pa.string()),
        "problem": pa.array([d.problem for d in damage], pa.string()),
    })


def open_store(root: Path | str, as_of: str | None = None, extra_damage: list[Damage] = ()) -> StoreView:
    """A sandboxed, read-only view of the store at ``root`` (as it was after run ``as_of``);
    ``extra_damage``: files found unreadable otherwise (left out like any damaged file)."""
    from factrecall.stages import STAGES, producers

    store = Store(root, as_of=as_of, create=False)
    catalog, files, damage = store.verified_catalog(extra_damage)
    current = {r.result_id for r in catalog.current()}
    committed = set(catalog.results) - set(catalog.damaged)
    con = duckdb.connect(":memory:", config=_SANDBOX)
    templates = _sql_files("templates")
    con.execute("CREATE SCHEMA stored")
    con.register("_results", _results_table(catalog))
    con.register("_upstream", _upstream_table(catalog))
    con.register("_damaged", _damaged_table(damage))
    store.preopen(RECORDS)
    for name, schema in RECORDS.items():
        rows = store.scan(name)
        con.register(f"_{name}", rows if rows is not None else schema.empty_table())
    con.execute(templates["domains"])
    made = producers()
    missing: dict[str, str] = {}
    tables = sorted({t for s in STAGES.values() for t in s.tables})
    broken = {d.table: d.message() for d in damage if not d.partition}  # tables whose log cannot be read
    for table in tables:
        ds_all = intact_dataset(store, table, files[table], committed) if table in files else None
        if ds_all is None:
            missing[table] = (broken[table] if table in broken else
                              f"table {table} is empty: run `{made.get(table, 'factrecall capture')}` first")
            sql = templates["empty_table"].format(table=table, message=missing[table].replace("'", "''"))
            con.execute(sql)
            con.execute(templates["empty_table"].format(table=f"stored.{table}", message=missing[table].replace("'", "''")))
            continue
        con.register(f"_stored_{table}", ds_all)
        con.register(f"_current_{table}", intact_dataset(store, table, files.get(table, []), current))
        con.execute(templates["current_table"].format(table=table))
        con.execute(templates["stored_table"].format(table=table))
    views = _sql_files("views")
    pending = [v for v in views if v not in missing]
    while pending:  # derived views in dependency order; one needing an empty table is empty too
        still = []
        for name in pending:
            deps = _refs(views[name]) & (set(views) | set(tables))
            if deps & set(missing):
                missing[name] = "; ".join(missing[d] for d in sorted(deps & set(missing)))
                con.execute(templates["empty_table"].format(table=name, message=missing[name].replace("'", "''")))
                continue
            try:
                con.execute(views[name])
            except duckdb.CatalogException:
                still.append(name)  # a dependency is not created yet
        if len(still) == len(pending):
            con.execute(views[still[0]])  # no progress: a real error in a view file; raise it
        pending = still
    return StoreView(con, catalog, damage, missing)


def connect(root: Path | str, as_of: str | None = None) -> duckdb.DuckDBPyConnection:
    """The sandboxed DuckDB connection of ``open_store``."""
    return open_store(root, as_of).con


def list_named_queries() -> dict[str, str]:
    """Named queries: name -> one-line description (the file's first ``-- `` comment), followed by the
    parameters it requires, e.g. ``"... [requires --param model=value --param relation=value]"``."""
    out = {}
    for name, text in _sql_files("queries").items():
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        desc = first[2:].strip() if first.startswith("--") else ""
        needed = query_params(text)
        if needed:
            desc = f"{desc} [requires {_param_syntax(needed)}]".strip()
        out[name] = desc
    return out


def internal_query(name: str) -> str:
    """SQL text of a query the code runs itself (``sql/internal``)."""
    return _sql_files("internal")[name].strip().rstrip(";")


def named_query(name: str) -> str:
    """SQL text of the named query ``name``."""
    queries = _sql_files("queries")
    if name not in queries:
        raise ValueError(f"unknown query {name!r}; named queries: {', '.join(queries)}")
    return queries[name].strip().rstrip(";")


def _flatten_nested(df: pl.DataFrame) -> pl.DataFrame:
    """Nested columns (lists, arrays, structs) as JSON strings, for CSV."""
    cols = []
    for name, dtype in df.schema.items():
        if dtype.is_nested():
            vals = [None if v is None else json.dumps(v, default=str) for v in df[name].to_list()]
            cols.append(pl.Series(name, vals, dtype=pl.String))
    return df.with_columns(cols) if cols else df


def _render_table(df: pl.DataFrame, max_rows: int = 200) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style=None, box=None)
    for name, dtype in df.schema.items():
        table.add_column(f"{name}\n{dtype}", overflow="fold")
    for row in df.head(max_rows).iter_rows():
        table.add_row(*[_cell(v) for v in row])
    buf = io.StringIO()
    Console(file=buf, width=max(100, 16 * df.width), color_system=None, force_terminal=False).print(table)
    text = buf.getvalue()
    if df.height > max_rows:
        text += f"... {df.height - max_rows} more rows ({df.height} in all)\n"
    return text + f"({df.height} rows)\n"


def _cell(v) -> str:
    """A value as the text table shows it: a string with leading or trailing whitespace (or a control
    character) is quoted, so " Paris" never reads as "Paris"; long values are cut at 60 characters."""
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    if isinstance(v, str) and (s != s.strip() or any(c in s for c in "\n\r\t")):
        s = repr(s)
    return s if len(s) <= 60 else s[:57] + "..."


def _explain(e: duckdb.Error, view: StoreView, sql: str) -> str:
    """One line for a failed query: what is not allowed, which view is empty, or DuckDB's error (its lines
    up to the quoted query, joined)."""
    lines = []
    for line in str(e).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    first = "; ".join(lines)
    if isinstance(e, duckdb.PermissionException) or "disabled by configuration" in str(e) \
            or "configuration has been locked" in str(e):
        return ("not allowed: queries read the store's views and nothing else (no COPY or EXPORT, no ATTACH, "
                f"no INSTALL/LOAD, no reading or writing files, no settings); DuckDB: {first}")
    used = sorted(set(view.missing) & _refs(sql))
    if used:
        return "; ".join(view.missing[m] for m in used)
    if isinstance(e, duckdb.CatalogException):
        available = [v for v in view_names() if v not in view.missing]
        return f"DuckDB: {first}; views: {', '.join(available) or '(none)'} (and stored.<table>)"
    return f"DuckDB: {first} (`factrecall query --list` lists the views and named queries)"


def _check_param_values(view: StoreView, params: dict[str, str]) -> None:
    """A query that found nothing: say so when a model, relation or shot parameter names nothing stored,
    with the values that exist (one line)."""
    for name in ("model", "relation", "shot"):
        if name not in params:
            continue
        values = [str(v) for (v,) in view.sql(f"SELECT DISTINCT {name} FROM results WHERE status = 'current' "
                                              f"ORDER BY {name}").fetchall()]
        if params[name] not in values:
            raise QueryError(f"--param {name}={params[name]} matches nothing in the store; "
                             f"{name}s with results: {', '.join(values) or '(none)'}")


def _unreadable_file(e: duckdb.Error, root: Path | str) -> Damage | None:
    """The store file a failed query could not read, as damage, when DuckDB's message names one."""
    m = _FILE_ERROR.search(str(e))
    if not m:
        return None
    table, problem, rel = m.group(1), m.group(2), m.group(3)
    partition = dict(part.split("=", 1) for part in rel.split("/")[:-1] if "=" in part)
    return Damage(table, str(store_location(root) / table / rel), partition, f"unreadable ({problem.splitlines()[0]})")


def _on_store(root: Path | str, sql: str, bind: dict | None, as_of: str | None) -> tuple[pl.DataFrame, list[str]]:
    """The query's result over the store and its damage lines; a file that fails to read (corrupt, of the right
    size) is left out, and the query retried."""
    found: list[Damage] = []
    while True:
        try:
            view = open_store(root, as_of, found)
        except (StoreError, delta.TableLogError) as exc:
            raise QueryError(str(exc)) from exc
        try:
            rel = view.sql(sql, bind)
            df = rel.pl() if rel is not None else pl.DataFrame()
            if df.height == 0 and bind:
                _check_param_values(view, bind)
            return df, view.warnings()
        except duckdb.Error as e:
            bad = _unreadable_file(e, root)
            if bad is None or any(d.path == bad.path for d in found):
                raise QueryError(_explain(e, view, sql)) from e
            found.append(bad)
        finally:
            view.close()


def _on_published(folder: Path | str, sql: str, bind: dict | None) -> tuple[pl.DataFrame, list[str]]:
    """The query's result over a folder of published claims and the files left out (``storage.published``)."""
    from .published import PUBLISHED_VIEWS, open_published

    with open_published(folder) as view:
        try:
            rel = view.sql(sql, bind)
            return (rel.pl() if rel is not None else pl.DataFrame()), view.warnings()
        except duckdb.Error as e:
            line = _explain(e, view, sql)
            if isinstance(e, duckdb.CatalogException) and not line.startswith("not allowed"):
                line = (f"published claims have the views {', '.join(PUBLISHED_VIEWS)} only (the others need the "
                        f"store); DuckDB: {' '.join(str(e).splitlines()[0].split())[:200]}")
            raise QueryError(line) from e


def run_query(root: Path | str | None, sql: str, fmt: str = "table", out: Path | None = None,
              params: dict[str, str] | None = None, as_of: str | None = None, warn=None,
              published: Path | str | None = None) -> str:
    """Run ``sql`` against the store; return the result as text (or the parquet file's path).

    fmt: "table" (text table), "csv", "json" (list of records) or "parquet" (needs ``out``).
    With ``out`` the text formats are also written there. ``params`` binds DuckDB named parameters
    (``$name`` in ``sql``) to string values; every ``$name`` must be given and nothing else. ``as_of`` (a
    run id) answers from the store as it was after that run; ``warn(line)`` receives one line per damaged
    file. SQL errors, blocked statements and missing/unknown parameters raise ``QueryError``. With
    ``published`` (a folder of published claims, ``storage.published``) the query runs over those files
    instead of a store (``root`` and ``as_of`` unused).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(_FORMATS)}")
    if fmt == "parquet" and out is None:
        raise ValueError("format parquet needs an output path (out)")
    bind = _check_params(sql, params)
    df, warnings = _on_published(published, sql, bind) if published is not None else _on_store(root, sql, bind, as_of)
    for line in warnings:
        if warn is not None:
            warn(line)
    if fmt == "parquet":
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(out)
        return str(out)
    if fmt == "csv":
        text = _flatten_nested(df).write_csv()
    elif fmt == "json":
        text = json.dumps(df.to_dicts(), default=str)
    else:
        text = _render_table(df)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    return text
