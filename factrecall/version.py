"""Code version recorded in every run: package version + a hash of the source that computes results."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from importlib.resources import files

__version__ = "0.1.0"

_SOURCE_PACKAGES = ("factrecall.tasks", "factrecall.storage", "factrecall.flows", "factrecall.sql")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<version>+<sha256[:12] of every .py/.sql file of the computing packages>`."""
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        root = files(package)
        for path in sorted(_walk(root), key=lambda p: str(p)):
            digest.update(str(path).split(package.split(".")[-1], 1)[-1].encode())
            digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _walk(root):
    for entry in root.iterdir():
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _walk(entry)
        elif entry.name.endswith((".py", ".sql")):
            yield entry


def package_versions() -> dict[str, str]:
    names = ("torch", "transformers", "prefect", "duckdb", "pyarrow", "polars", "numpy", "gguf", "tokenizers")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out
