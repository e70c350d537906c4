"""Published claims: claim rows written out of a store with what produced them, read back without it
(docs/METHOD.md §11).

A folder of published claims (``results/<spec>/`` in the repository) holds files written by the named query
``published_claims`` (``factrecall query --named published_claims --format csv --out FILE``), one per run or
machine. ``open_published(folder)`` reads every ``*.csv`` and ``*.parquet`` file in it into a sandboxed,
in-memory DuckDB connection with the views ``claims`` and ``models`` (the store's columns, so the named queries
over them run unchanged: ``claims_by_size``, ``claim_matrix``, ``claims_by_domain``) and ``published`` (every
column, provenance included). Nothing is mixed silently: two files that publish different results for the same
(model, relation, shot, claim) are refused with both named, a file that cannot be read or lacks a column is
named and left out (the others are read), and the same result published twice is read once.

``publish(store, folder)`` (`factrecall publish`) writes the store's current claims that the folder does not hold
yet to a new file there: how a sweep run in parts, on one machine after another, is published part by part. It
writes nothing when a claim of the store has a different result in the folder, or a file of the folder cannot be
read (either would make the folder refuse to open, or hide a conflict).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from .query import _SANDBOX, QueryError, SandboxedView, _sql_files

__all__ = ["PUBLISHED_COLUMNS", "PUBLISHED_VIEWS", "Publication", "PublishedError", "PublishedView", "open_published",
           "publish"]

#: The columns of the named query ``published_claims``, each with the type it is read back as.
PUBLISHED_COLUMNS: dict[str, pl.DataType] = {
    "model": pl.String, "family": pl.String, "dtype": pl.String, "params": pl.Int64, "model_sha256": pl.String,
    "relation": pl.String, "domain": pl.String, "relation_hash": pl.String, "shot": pl.Int32, "step": pl.Int8,
    "claim": pl.String, "statistic": pl.String, "value": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
    "n": pl.Int32, "threshold": pl.Float64, "verdict": pl.String, "note": pl.String, "result_id": pl.String,
    "source_result_id": pl.String, "input_hash": pl.String, "stage_version": pl.Int32, "code_digest": pl.String,
    "max_prompts": pl.Int64, "seed": pl.Int64, "run_id": pl.String, "code_version": pl.String,
    "committed_at": pl.String,
}
#: Columns a file written before claims version 2 lacks: read as null there.
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "null_value": pl.Float64, "value_all": pl.Float64, "lo_all": pl.Float64, "hi_all": pl.Float64, "n_all": pl.Int32,
}
_KEY = ("model", "relation", "shot", "claim")
#: What a query over published claims can use (the rest of a store's views need the store).
PUBLISHED_VIEWS = ("claims", "models", "published")


class PublishedError(QueryError):
    """Published claims that cannot be read as one coherent set (one line: what and what to do)."""


@dataclass
class PublishedView(SandboxedView):
    """A sandboxed connection over a folder's published claims, and the files it left out."""

    con: duckdb.DuckDBPyConnection
    files: list[Path]
    damage: list[str] = field(default_factory=list)  # one line per file left out
    missing: dict[str, str] = field(default_factory=dict)  # (the store's empty views; none here)

    def warnings(self) -> list[str]:
        return list(self.damage)


def _read(path: Path) -> pl.DataFrame:
    """One published file with the published columns and types (raises ValueError saying what is wrong)."""
    try:
        df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise ValueError(f"cannot be read ({' '.join(str(exc).split())[:160]})") from None
    lacking = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if lacking:
        raise ValueError(f"lacks column(s) {', '.join(lacking)} (not written by the named query published_claims)")
    df = df.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in OPTIONAL_COLUMNS if c not in df.columns])
    try:
        return df.select([pl.col(c).cast(pl.String).cast(t, strict=True)
                          for c, t in {**PUBLISHED_COLUMNS, **OPTIONAL_COLUMNS}.items()])
    except Exception as exc:  # noqa: BLE001 - a value of the wrong type
        raise ValueError(f"has a value of the wrong type ({' '.join(str(exc).split())[:160]})") from None


def open_published(folder: Path | str) -> PublishedView:
    """The published claims in ``folder`` as a sandboxed DuckDB connection (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishedError(f"{folder}: no such folder of published claims; give the folder the "
                             "`published_claims` files were written to (e.g. results/size-axis)")
    files = _published_files(folder)
    frames, damage, read = [], [], []
    for path in files:
        try:
            frames.append(_read(path).with_columns(pl.lit(path.name).alias("published_file")))
            read.append(path)
        except ValueError as exc:
            damage.append(f"damaged: {path}: {exc}; left out")
    if not frames:
        why = f"; {len(damage)} file(s) left out" if damage else ""
        raise PublishedError(f"{folder}: no readable published claims (*.csv, *.parquet){why}; write them with "
                             "`factrecall query --named published_claims --format csv --out FILE`")
    rows = pl.concat(frames).unique(subset=[*_KEY, "result_id"], keep="first", maintain_order=True)
    clash = rows.group_by(list(_KEY)).agg(pl.col("result_id").n_unique().alias("k"), pl.col("published_file"),
                                          pl.col("result_id")).filter(pl.col("k") > 1)
    if clash.height:
        first = clash.sort(list(_KEY)).row(0, named=True)
        raise PublishedError(
            f"{folder}: {clash.height} claim(s) published twice with different results, e.g. {first['claim']} of "
            f"{first['model']}/{first['relation']}/shot={first['shot']} in {' and '.join(first['published_file'])} "
            f"(results {', '.join(first['result_id'])}); keep one file per result (move the other out of the folder)")
    con = duckdb.connect(":memory:", config=_SANDBOX)
    con.register("_published", rows.to_arrow())
    con.execute(_sql_files("internal")["published_views"])
    return PublishedView(con, read, damage)


@dataclass(frozen=True)
class Publication:
    """What ``publish`` did: the file written (None: nothing new), its rows, and the claims already there."""

    path: Path | None
    claims: int
    partitions: int
    already: int


def publish(root, folder: Path | str, name: str | None = None, warn=None) -> Publication:
    """Write the current claims of the store at ``root`` that ``folder`` does not hold yet to ``folder/name``
    (default ``claims-<UTC date>[-k].csv``, the first free one), in the named query ``published_claims``'s columns.
    Refused (``PublishedError``, nothing written) when a claim has a different result in the folder or a file there
    cannot be read; ``warn(line)`` receives the store's damage lines."""
    from .query import _flatten_nested, _on_store, named_query

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PublishedError(f"{folder}: not a folder; give the folder to publish into (e.g. results/size-axis)")
    if name is not None and (Path(name).name != name or Path(name).suffix not in (".csv", ".parquet")):
        raise PublishedError(f"--name {name}: give a file name (no folder) ending in .csv or .parquet")
    current, warnings = _on_store(root, named_query("published_claims"), None, None)
    for line in warnings:
        if warn is not None:
            warn(line)
    held = []
    for path in _published_files(folder) if folder.is_dir() else []:
        try:
            held.append(_read(path).select([*_KEY, "result_id"]).with_columns(pl.lit(path.name).alias("file")))
        except ValueError as exc:
            raise PublishedError(f"{path}: {exc}; nothing published (repair the file or move it out of {folder}, "
                                 "then publish again)") from None
    keys = {c: current.schema[c] for c in _KEY}  # the folder's keys in the store's types, to join on
    held = (pl.concat(held).with_columns([pl.col(c).cast(t) for c, t in keys.items()]) if held
            else pl.DataFrame(schema={**keys, "result_id": pl.String, "file": pl.String}))
    other = current.select([*_KEY, "result_id"]).join(held, on=list(_KEY)).filter(
        pl.col("result_id") != pl.col("result_id_right"))
    if other.height:
        first = other.sort(list(_KEY)).row(0, named=True)
        raise PublishedError(
            f"{folder}: {other.height} claim(s) of the store have a different result there, e.g. {first['claim']} of "
            f"{first['model']}/{first['relation']}/shot={first['shot']} (published {first['result_id_right']} in "
            f"{first['file']}, the store's current {first['result_id']}); nothing published: publish into another "
            "folder, or move the older file out if the new results replace it")
    new = current.join(held.select([*_KEY, "result_id"]), on=[*_KEY, "result_id"], how="anti")
    already = current.height - new.height
    if new.height == 0:
        return Publication(None, 0, 0, already)
    path = folder / (name or _free_name(folder))
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"  # a leading dot: never read as published claims
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            new.write_parquet(tmp)
        else:
            tmp.write_text(_flatten_nested(new).write_csv(), encoding="utf-8")
        os.link(tmp, path)  # fails if the name was taken meanwhile: a published file is never replaced
    except FileExistsError:
        raise PublishedError(f"{path} exists; give another file name (published files are never replaced)") from None
    except OSError as exc:
        raise PublishedError(f"{path}: cannot be written ({exc.strerror or exc}); nothing published") from None
    finally:
        tmp.unlink(missing_ok=True)
    partitions = new.select(["model", "relation", "shot"]).unique().height
    return Publication(path, new.height, partitions, already)


def _published_files(folder: Path) -> list[Path]:
    """The files of a folder of published claims, in name order (hidden temporary files are not among them)."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".csv", ".parquet") and p.is_file())


def _free_name(folder: Path) -> str:
    """``claims-<UTC date>.csv``, or ``claims-<UTC date>-<k>.csv`` with the first k whose stem no file has."""
    stem = f"claims-{datetime.now(timezone.utc):%Y%m%d}"
    taken = {p.stem for p in _published_files(folder)} if folder.is_dir() else set()
    return next(f"{c}.csv" for c in (stem if k == 1 else f"{stem}-{k}" for k in itertools.count(1)) if c not in taken)
