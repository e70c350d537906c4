"""DuckDB access to the store: views from ``sql/views``, named queries from ``sql/queries``.

``connect(root)`` returns an in-memory connection with one view per table (only committed
partitions) plus derived views (``head_dla_answer``). A view whose files do not exist yet is
replaced by a placeholder that raises "table X is empty: run ... first"; the connection's temp table
``missing_views(view, message)`` lists them. Nothing is written to the store.

Queries may use DuckDB named parameters (``$model``, ``$relation``, ...): ``query_params(sql)`` lists
them and ``run_query(..., params={"model": "gpt2"})`` binds them (values are strings; a query casts
them where it needs another type, e.g. ``$shot::INTEGER``).
"""

from __future__ import annotations

import glob as _glob
import io
import json
import re
from importlib import resources
from pathlib import Path

import duckdb
import polars as pl

from factrecall.storage.schema import FINAL_LAYER_TABLES, HEAD_TABLES, MECHANISM_TABLES, MODEL_TABLES, TABLES

__all__ = [
    "connect", "list_named_queries", "named_query", "query_params", "run_query", "view_names", "QueryError",
]

#: What to run to fill each table (shown when a view has no files yet): the capture ("factrecall run")
#: writes the capture tables, per-model tables and run manifests; the head analysis ("factrecall heads")
#: writes the tables of stage "heads", the final-layer analysis ("factrecall final-layer") those of
#: stage "final_layer", the MLP analysis ("factrecall mlp") those of stage "mlp".
PRODUCERS: dict[str, str] = {
    **{t: "factrecall run" for t in (*TABLES, *MODEL_TABLES, "runs")},
    **{t: "factrecall heads" for t in HEAD_TABLES},
    **{t: "factrecall final-layer" for t in FINAL_LAYER_TABLES},
    **{t: "factrecall mlp" for t in MECHANISM_TABLES},
}
_DEFAULT_PRODUCER = "factrecall run"
_GLOB_RE = re.compile(r"read_(?:parquet|json_auto|json)\(\s*'\{root\}/([^']*)'")
_REF_RE = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_COMMENT_RE = re.compile(r"--[^\n]*")


# Tokens that may hold a "$": string literals, quoted identifiers, comments, $$-quoted strings; else a
# named parameter.
_PARAM_SCAN_RE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$\$.*?\$\$|\$([A-Za-z_][A-Za-z0-9_]*)",
    re.DOTALL,
)


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
_EMPTY_COMMITS = (
    "CREATE OR REPLACE VIEW commits AS SELECT NULL::VARCHAR AS model, NULL::VARCHAR AS relation, "
    "NULL::INTEGER AS shot, NULL::VARCHAR AS stage, NULL::VARCHAR AS input_hash, NULL::VARCHAR AS run_id, "
    "NULL::VARCHAR[] AS tables, NULL::TIMESTAMPTZ AS committed_at, NULL::DOUBLE AS seconds WHERE false"
)
_FORMATS = ("table", "csv", "json", "parquet")


class QueryError(RuntimeError):
    """An SQL error against the store, with DuckDB's message and the available views."""


def _sql_dir(kind: str):
    return resources.files("factrecall.sql") / kind


def _read_sql_files(kind: str) -> dict[str, str]:
    d = _sql_dir(kind)
    out = {}
    for f in d.iterdir():
        if f.name.endswith(".sql"):
            out[f.name[: -len(".sql")]] = f.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def view_names() -> list[str]:
    """Names of all views defined in ``sql/views``."""
    return list(_read_sql_files("views"))


def _missing_message(table: str) -> str:
    return f"table {table} is empty: run `{PRODUCERS.get(table, _DEFAULT_PRODUCER)}` first"


def connect(root: Path | str) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection whose views read the store at ``root``."""
    root = Path(root).resolve()
    sql_root = str(root).replace("'", "''")
    con = duckdb.connect(":memory:")
    views = _read_sql_files("views")
    missing: dict[str, str] = {}

    def has_files(text: str) -> bool:
        globs = _GLOB_RE.findall(text)
        return all(_glob.glob(_glob.escape(str(root)) + "/" + g) for g in globs)

    # commits first: every partitioned view joins on it.
    commits = views.pop("commits")
    con.execute(commits.replace("{root}", sql_root) if has_files(commits) else _EMPTY_COMMITS)
    derived = []
    for name, text in views.items():
        if not _GLOB_RE.search(text):
            derived.append(name)
        elif has_files(text):
            con.execute(text.replace("{root}", sql_root))
        else:
            missing[name] = _missing_message(name)
    # Derived views (no files of their own) in dependency order; skip those needing a missing view.
    pending = derived
    while pending:
        still = []
        for name in pending:
            deps = _refs(views[name]) & set(views)
            if deps & set(missing):
                missing[name] = "; ".join(missing[d] for d in sorted(deps & set(missing)))
                continue
            try:
                con.execute(views[name].replace("{root}", sql_root))
            except duckdb.CatalogException:
                still.append(name)  # a dependency is not created yet
        if len(still) == len(pending):
            # No progress: a real error in a view file; raise it.
            con.execute(views[still[0]].replace("{root}", sql_root))
        pending = still
    con.execute("CREATE TEMP TABLE missing_views (view VARCHAR, message VARCHAR)")
    for name, msg in sorted(missing.items()):
        con.execute("INSERT INTO missing_views VALUES (?, ?)", [name, msg])
        lit = msg.replace("'", "''")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM (SELECT 1 AS missing) WHERE error('{lit}') IS NULL")
    return con


def list_named_queries() -> dict[str, str]:
    """Named queries: name -> one-line description (the file's first ``-- `` comment), followed by the
    parameters it requires, e.g. ``"... [requires --param model=value --param relation=value]"``."""
    out = {}
    for name, text in _read_sql_files("queries").items():
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        desc = first[2:].strip() if first.startswith("--") else ""
        needed = query_params(text)
        if needed:
            desc = f"{desc} [requires {_param_syntax(needed)}]".strip()
        out[name] = desc
    return out


def named_query(name: str) -> str:
    """SQL text of the named query ``name``."""
    queries = _read_sql_files("queries")
    if name not in queries:
        raise ValueError(f"unknown query {name!r}; named queries: {', '.join(queries)}")
    return queries[name].strip().rstrip(";")


def _missing(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT view, message FROM missing_views").fetchall())


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
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def run_query(root: Path | str, sql: str, fmt: str = "table", out: Path | None = None,
              params: dict[str, str] | None = None) -> str:
    """Run ``sql`` against the store; return the result as text (or the parquet file's path).

    fmt: "table" (text table), "csv", "json" (list of records) or "parquet" (needs ``out``).
    With ``out`` the text formats are also written there. ``params`` binds DuckDB named parameters
    (``$name`` in ``sql``) to string values; every ``$name`` must be given and nothing else.
    SQL errors and missing/unknown parameters raise ``QueryError``.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(_FORMATS)}")
    if fmt == "parquet" and out is None:
        raise ValueError("format parquet needs an output path (out)")
    bind = _check_params(sql, params)
    con = connect(root)
    try:
        try:
            rel = con.sql(sql, params=bind) if bind else con.sql(sql)
            df = rel.pl() if rel is not None else pl.DataFrame()
        except duckdb.Error as e:
            missing = _missing(con)
            used = sorted(set(missing) & _refs(sql))
            available = [v for v in view_names() if v not in missing]
            lines = [missing[m] for m in used] + [
                f"DuckDB: {e}",
                f"hint: available views: {', '.join(available) or '(none)'}",
            ]
            if missing:
                lines.append(f"      empty (no files yet): {', '.join(sorted(missing))}")
            raise QueryError("\n".join(lines)) from e
    finally:
        con.close()
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
