"""What is damaged in a store: a file a table's log names that is missing, truncated, unreadable or corrupt
(docs/METHOD.md §8), described with the table, the file and the partition it belongs to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .location import ObjectPath, StoreAccessError, arrow_target, unreachable

__all__ = ["Damage", "StoreAccessError", "file_problem", "footer_problem", "is_gone"]


@dataclass(frozen=True)
class Damage:
    """A file of a table version that is missing, truncated or unreadable (or a table whose log is)."""

    table: str
    path: str
    partition: dict
    problem: str

    @property
    def result_id(self) -> str | None:
        return self.partition.get("result_id")

    def message(self) -> str:
        where = "/".join(f"{k}={self.partition[k]}" for k in ("model", "relation", "shot") if k in self.partition)
        return f"{self.table} file {self.path} ({where}) is {self.problem}"


def is_gone(exc: Exception) -> bool:
    text = str(exc).lower()
    return "not found" in text or "no such file" in text


def footer_problem(path: Path) -> str | None:
    where, fs = arrow_target(path)
    try:
        pq.read_metadata(where, filesystem=fs)
    except pa.ArrowInvalid as exc:
        return f"unreadable ({str(exc).splitlines()[0]})"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if isinstance(path, ObjectPath):
            raise unreachable(path, exc) from None
        return f"unreadable ({str(exc).splitlines()[0]})"
    return None


def file_problem(path: Path, size: int, listing: dict[str, int] | None = None) -> str | None:
    """``path``: a ``Path`` or an object-store ``ObjectPath`` (``storage.location``). ``listing``: the sizes of
    the files of the object-store table ``path`` belongs to, listed once (one request per table instead of one
    per file). An object store that does not answer raises ``StoreAccessError``: that is not damage."""
    if listing is not None and isinstance(path, ObjectPath):
        found = listing.get(path.key)
    else:
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            found = None
        except OSError as exc:
            if isinstance(path, ObjectPath):
                raise unreachable(path, exc) from None
            return f"unreadable ({exc.strerror or str(exc).splitlines()[0]})"
    if found is None:
        return "missing"
    if found != size:
        return f"truncated or changed ({found} bytes; the table's log says {size})"
    if isinstance(path, Path) and not os.access(path, os.R_OK):
        return "unreadable (no read permission)"
    return None
