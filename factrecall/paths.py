"""Where factrecall keeps its state: the store, the model cache and Prefect's home.

`FACTRECALL_HOME` overrides the state directory (default: `.factrecall/` in the current directory);
`FACTRECALL_STORE` and `FACTRECALL_MODEL_CACHE` override the store and the model cache inside it.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("FACTRECALL_HOME", Path.cwd() / ".factrecall")).resolve()


def default_store() -> Path:
    return Path(os.environ.get("FACTRECALL_STORE", state_dir() / "store")).resolve()


def model_cache_dir() -> Path:
    """Dequantised GGUF cache (`FACTRECALL_MODEL_CACHE` overrides; default `<state>/models`)."""
    return Path(os.environ.get("FACTRECALL_MODEL_CACHE", state_dir() / "models")).resolve()


def configure_prefect() -> None:
    """Quiet, offline, serverless Prefect with its home inside the state directory.

    Must run before `prefect` is imported; explicit user settings win.
    """
    home = Path(os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect")))
    home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
