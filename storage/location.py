"""Where a store lives: a local folder, or a prefix in an object store: ``s3://bucket/prefix`` (AWS S3 and
S3-compatible servers) or ``gs://bucket/prefix`` (Google Cloud Storage), which both Delta Lake and PyArrow read.
(Azure's URLs are not supported: PyArrow's Azure file system needs the account outside the URL.)

A local store is a ``pathlib.Path``. An object-store location is an ``ObjectPath``: the few ``Path`` operations the
store uses (``/``, ``name``, ``exists``, ``is_dir``, ``iterdir``, ``stat``, ``unlink``, ``mkdir``) over a PyArrow
file system, so the store's code is the same for both. Two adapters connect a location to the libraries:
``arrow_target(path)`` gives PyArrow's (path, filesystem) pair, ``delta_options(path)`` delta-rs' storage options.

Credentials and endpoints come from the usual environment variables, read by both libraries: for S3
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (or a profile or instance role), ``AWS_REGION`` and, for an
S3-compatible server, ``AWS_ENDPOINT_URL`` (``http://`` endpoints are allowed). Concurrent writers to S3 commit
with conditional puts (``conditional_put = etag``), which S3 and S3-compatible servers support; set
``AWS_S3_LOCKING_PROVIDER`` to use a DynamoDB lock instead (delta-rs' variables).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = ["LocationError", "ObjectPath", "StoreAccessError", "StoreLocation", "arrow_target", "delta_options",
           "is_object_store", "store_location", "unreachable"]

_S3 = ("s3", "s3a")
_GCS = ("gs", "gcs")
OBJECT_SCHEMES = (*_S3, *_GCS)


class LocationError(ValueError):
    """A store URL that cannot be used (unknown scheme, no bucket)."""


class StoreAccessError(RuntimeError):
    """An object store that does not answer (network, credentials, throttling): not damage, so nothing is
    marked damaged or recomputed because of it; the command stops with one line."""


def unreachable(where, exc: OSError) -> StoreAccessError:
    detail = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:160]
    return StoreAccessError(f"cannot reach the store at {where} ({detail}); check the network and the credentials "
                            "(AWS_* variables for s3://), then run the command again")


@dataclass(frozen=True)
class _Stat:
    st_size: int


class ObjectPath:
    """A key prefix in an object store, with the ``pathlib.Path`` operations the store needs. Folders are
    implicit in object stores: ``mkdir`` does nothing, and a folder exists while a key lies under it."""

    __slots__ = ("scheme", "key", "fs")

    def __init__(self, scheme: str, key: str, fs: pafs.FileSystem) -> None:
        self.scheme, self.key, self.fs = scheme, key.strip("/"), fs

    def __truediv__(self, part: str) -> "ObjectPath":
        return ObjectPath(self.scheme, f"{self.key}/{str(part).strip('/')}", self.fs)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "ObjectPath") -> bool:
        return str(self) < str(other)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.scheme, self.key.rsplit("/", 1)[0], self.fs) if "/" in self.key else self

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.key)
        except OSError as exc:
            raise unreachable(self, exc) from None

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def stat(self) -> _Stat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        return _Stat(info.size or 0)

    def iterdir(self):
        if not self.is_dir():
            return iter(())
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.key, allow_not_found=True))
        except OSError as exc:
            raise unreachable(self, exc) from None
        return iter(sorted((ObjectPath(self.scheme, i.path, self.fs) for i in infos), key=str))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        return None

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError:
            if not missing_ok or self.exists():
                raise

    def resolve(self) -> "ObjectPath":
        return self


StoreLocation = Path | ObjectPath


def is_object_store(location) -> bool:
    return isinstance(location, ObjectPath)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


@lru_cache(maxsize=None)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.FileSystem:
    kwargs: dict = {}
    if endpoint:
        url = urlparse(endpoint)
        kwargs |= {"endpoint_override": url.netloc or url.path, "scheme": url.scheme or "https"}
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def store_location(root: str | Path | ObjectPath) -> StoreLocation:
    """The location a ``--store`` value names: an ``ObjectPath`` for an object-store URL, else the resolved
    local folder (``file://`` URLs included)."""
    if isinstance(root, (ObjectPath, Path)):
        return root if isinstance(root, ObjectPath) else root.expanduser().resolve()
    text = str(root)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("", "file"):
        return Path(text[len("file://"):] if scheme else text).expanduser().resolve()
    if scheme not in OBJECT_SCHEMES:
        raise LocationError(f"store {text}: {scheme}:// is not a supported store URL; use a local folder or "
                            f"{', '.join(s + '://' for s in OBJECT_SCHEMES)}")
    key = text.split("://", 1)[1].strip("/")
    if not key:
        raise LocationError(f"store {text} names no bucket; give {scheme}://bucket/prefix")
    if scheme in _S3:
        fs = _s3_filesystem(_endpoint(), os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
        return ObjectPath("s3", key, fs)
    try:
        fs = pafs.GcsFileSystem()
    except Exception as exc:  # noqa: BLE001 - PyArrow built without GCS, or no credentials: one line
        raise LocationError(f"store {text}: cannot open Google Cloud Storage ({' '.join(str(exc).split())[:120]})") from None
    return ObjectPath("gs", key, fs)


def arrow_target(path) -> tuple[str, pafs.FileSystem | None]:
    """PyArrow's (path, filesystem) for a location (filesystem None: the local one)."""
    return (path.key, path.fs) if isinstance(path, ObjectPath) else (str(path), None)


def arrow_subtree(path) -> pafs.FileSystem:
    """A PyArrow file system rooted at ``path`` (a table's folder): datasets name files relative to it."""
    where, fs = arrow_target(path)
    return pafs.SubTreeFileSystem(where, fs or pafs.LocalFileSystem())


def delta_options(path) -> dict[str, str] | None:
    """delta-rs' storage options for a location (None for a local folder; credentials come from the
    environment)."""
    if not isinstance(path, ObjectPath):
        return None
    options: dict[str, str] = {}
    if path.scheme == "s3":
        endpoint = _endpoint()
        if endpoint:
            options["endpoint_url"] = endpoint
            if endpoint.startswith("http://"):
                options["allow_http"] = "true"
        if not os.environ.get("AWS_S3_LOCKING_PROVIDER"):
            options["conditional_put"] = "etag"
    return options
