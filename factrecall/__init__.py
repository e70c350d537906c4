"""factrecall: how transformer language models recall facts (Lv et al. 2024), measured and queryable.

For notebooks::

    import factrecall
    with factrecall.open_store() as store:          # the default store, read-only
        df = store.pl(factrecall.named_query("claim_matrix"))   # a named query -> Polars
        store.sql("SELECT count(*) FROM logits").fetchall()      # any SQL over the views -> DuckDB
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["named_query", "open_store"]


def open_store(store: str | Path | None = None, as_of: str | None = None):
    """A read-only DuckDB connection to a store with every view (``factrecall query --list``): ``.sql(text)``
    returns a DuckDB relation, ``.pl(text)`` a Polars DataFrame, ``.con`` the connection, ``.warnings()``
    the damaged files left out. ``store``: a store folder or an object-store URL such as s3://bucket/prefix
    (default: $FACTRECALL_STORE or .factrecall/store); ``as_of``: a run id, to read the store as it was after that run. Use it as a
    context manager or call ``.close()``."""
    from factrecall.paths import default_store
    from factrecall.storage.location import store_location
    from factrecall.storage.query import QueryError, open_store as _open

    root = store_location(store if store is not None else default_store())
    if not root.exists():
        raise QueryError(f"no store at {root}; run `factrecall reproduce paper-quick` first or pass store=")
    return _open(root, as_of)


def named_query(name: str) -> str:
    """The SQL of a named query (``sql/queries/<name>.sql``), e.g. ``store.pl(named_query("claims_by_domain"))``."""
    from factrecall.storage.query import named_query as _named

    return _named(name)
