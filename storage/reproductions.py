"""Reads and writes of reproductions (docs/METHOD.md §11): the claims of a run's partitions, the claims of
the previous reproduction of a spec or of a pinned baseline file, and the reproduction's records."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from .catalog import Catalog
from .store import Store, StoreError

__all__ = ["BASELINE_COLUMNS", "claims_of_results", "previous_reproduction", "read_baseline", "write_reproduction"]

#: What a baseline file (CSV or Parquet) must have: one row per (model, relation, shot, claim).
BASELINE_COLUMNS = ("model", "relation", "shot", "claim", "value", "verdict")


def claims_of_results(store: Store, catalog: Catalog, result_ids: list[str]) -> list[dict]:
    """The ``claims`` rows of these claims results, each with its partition and ``result_id``."""
    rows = []
    for rid in result_ids:
        rec = catalog.results[rid]
        for row in store.read(rec, "claims").to_pylist():
            rows.append({**row, "model": rec.model, "relation": rec.relation, "shot": rec.shot, "result_id": rid})
    return rows


def previous_reproduction(store: Store, spec: str) -> tuple[str | None, list[dict]]:
    """The run id and claim rows of the latest earlier reproduction of ``spec`` (None, [] if there is none); a
    reproduction that refused a model is partial and is not compared with."""
    reps = store.scan("reproductions")
    if reps is None or reps.num_rows == 0:
        return None, []
    reps = reps.filter(pc.and_(pc.equal(reps["spec"], spec), pc.not_equal(reps["verdict"], "refused")))
    if reps.num_rows == 0:
        return None, []
    run_id = reps.sort_by([("started_at", "descending")])["run_id"][0].as_py()
    claims = store.scan("reproduction_claims")
    if claims is None:
        return run_id, []
    return run_id, claims.filter(pc.equal(claims["run_id"], run_id)).to_pylist()


def read_baseline(path: Path) -> list[dict]:
    """Claim rows from a baseline file (.csv or .parquet with ``BASELINE_COLUMNS``)."""
    import polars as pl

    try:
        df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise StoreError(f"baseline {path}: cannot be read ({' '.join(str(exc).split())[:200]}); "
                         "give a .csv or .parquet file of claim rows") from None
    missing = [c for c in BASELINE_COLUMNS if c not in df.columns]
    if missing:
        raise StoreError(f"baseline {path}: missing column(s) {', '.join(missing)}; it needs "
                         f"{', '.join(BASELINE_COLUMNS)} (export one with `factrecall query --named "
                         "reproduction_baseline --param run_id=RUN --format csv --out FILE`)")
    try:
        return df.select(BASELINE_COLUMNS).with_columns(pl.col("shot").cast(pl.Int64),
                                                        pl.col("value").cast(pl.Float64)).to_dicts()
    except Exception as exc:  # noqa: BLE001 - a non-numeric shot or value
        raise StoreError(f"baseline {path}: shot and value must be numbers ({' '.join(str(exc).split())[:160]}); "
                         "fix the file") from None


def write_reproduction(store: Store, reproduction: dict, claims: list[dict], drift: list[dict]) -> None:
    """Append the reproduction's claim rows, drift rows and its row (last: it marks the reproduction done)."""
    store.append_records("reproduction_claims", claims)
    store.append_records("drift", drift)
    store.append_records("reproductions", [reproduction])
