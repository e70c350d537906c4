"""Query-side costs of a store: the integrity check and catalogue at query start, `head_dla_answer` over
everything, each named query, and the store's size.

    python benchmarks/store_query.py --store .factrecall/store [--repeats 3]

Times are the best of ``--repeats`` in this process. The integrity check is also given as a share of a
plain connection's start-up (the views registered without checking anything), measured the same way.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from factrecall.storage.query import list_named_queries, named_query, open_store, query_params
    from factrecall.storage.store import Store

    root = args.store.resolve()
    store = Store(root, create=False)
    files = sum(1 for _ in root.rglob("*.parquet"))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"store {root}: {size / 2**30:.2f} GiB in {files} Parquet files, {len(store.data_tables())} data tables")

    t_check = best(lambda: store.check(), args.repeats)
    t_catalog = best(lambda: store.verified_catalog(), args.repeats)
    t_open = best(lambda: open_store(root).close(), args.repeats)
    print(f"integrity check (every file against its log): {t_check * 1000:.0f} ms; with the catalogue and row "
          f"counts: {t_catalog * 1000:.0f} ms; whole connection start-up: {t_open * 1000:.0f} ms "
          f"(the check is {t_catalog / t_open:.0%} of it)")

    view = open_store(root)
    n_results = view.sql("SELECT count(*) FROM results").fetchall()[0][0]
    sql = "SELECT model, count(*) AS n, avg(dla) AS mean_dla FROM head_dla_answer GROUP BY model ORDER BY model"
    t_dla = best(lambda: view.sql(sql).fetchall(), args.repeats)
    rows = view.sql(sql).fetchall()
    print(f"{n_results} results; head_dla_answer over everything: {t_dla:.2f} s for "
          f"{sum(r[1] for r in rows):,} head x prompt rows ({', '.join(f'{m}: {n:,}' for m, n, _ in rows)})")
    for name in list_named_queries():
        text = named_query(name)
        if query_params(text):  # needs --param values
            continue
        try:
            t = best(lambda: view.sql(text).fetchall(), 1)
        except Exception as exc:  # a table this store does not have
            print(f"  --named {name}: {str(exc).splitlines()[0][:80]}")
            continue
        print(f"  --named {name}: {t * 1000:.0f} ms")
    view.close()


if __name__ == "__main__":
    main()
