"""Where factrecall keeps its state: the store, the model cache and Prefect's home; how Prefect runs.

`FACTRECALL_HOME` overrides the state directory (default: `.factrecall/` in the current directory);
`FACTRECALL_STORE` and `FACTRECALL_MODEL_CACHE` override the store and the model cache inside it.
`FACTRECALL_DEBUG=1` (or `factrecall --verbose`) shows tracebacks and Prefect's own logging.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PathsError", "configure_prefect", "debug", "default_store", "model_cache_dir", "state_dir"]


class PathsError(ValueError):
    """A state path that cannot be used (e.g. FACTRECALL_HOME names a file)."""


def debug() -> bool:
    return os.environ.get("FACTRECALL_DEBUG", "") not in ("", "0", "false", "no")


def _folder(path: Path, what: str, variable: str) -> Path:
    if path.exists() and not path.is_dir():
        raise PathsError(f"{what} {path} is a file, not a folder; set {variable} to a folder")
    return path


def state_dir() -> Path:
    return _folder(Path(os.environ.get("FACTRECALL_HOME", Path.cwd() / ".factrecall")).resolve(),
                   "the state folder", "FACTRECALL_HOME")


def default_store() -> Path | str:
    """``FACTRECALL_STORE`` (a folder or an object-store URL, kept as text) or ``<state>/store``."""
    env = os.environ.get("FACTRECALL_STORE")
    if env and "://" in env:
        return env
    return Path(env or state_dir() / "store").resolve()


def model_cache_dir() -> Path:
    """Dequantised GGUF cache (`FACTRECALL_MODEL_CACHE` overrides; default `<state>/models`)."""
    return _folder(Path(os.environ.get("FACTRECALL_MODEL_CACHE", state_dir() / "models")).resolve(),
                   "the model cache", "FACTRECALL_MODEL_CACHE")


def configure_prefect() -> None:
    """Quiet, offline, serverless Prefect with its home inside the state directory.

    Must run before `prefect` is imported; explicit user settings win. Prefect's own logging is off
    (CRITICAL) unless debugging: our errors are one line each, and a failed task must not print
    Prefect's traceback of it.
    """
    home = Path(os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect")))
    if home.exists() and not home.is_dir():
        raise PathsError(f"Prefect's home {home} is a file, not a folder; set PREFECT_HOME or FACTRECALL_HOME")
    home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING" if debug() else "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
