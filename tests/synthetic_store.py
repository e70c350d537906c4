"""Write hand-made results into a store, the way the runner commits them (for SQL tests)."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from factrecall.storage.catalog import Requirement, ResultRecord
from factrecall.storage.schema import SCHEMAS
from factrecall.storage.store import Store


def put(store: Store, stage: str, key: tuple[str, str, int], tables: dict[str, list | pa.Table],
        upstream: tuple[ResultRecord, ...] = (), n_prompts: int = 1, seed: int = 0, run_id: str = "synthetic",
        select: bool = True, summary: dict | None = None, seconds: float = 1.0) -> ResultRecord:
    """Commit one result of ``stage`` for ``key`` holding ``tables`` (a table or a list of batches each),
    requiring exactly its ``upstream`` results, and select it."""
    with store.writing(), store.writer(stage, key, {t: SCHEMAS[t] for t in tables}) as w:
        for name, data in tables.items():
            for batch in (data if isinstance(data, list) else [data]):
                w.write(name, batch)

        def record(result_id, rows):
            return ResultRecord(
                result_id=result_id, stage=stage, model=key[0], relation=key[1], shot=key[2],
                input_hash=f"{stage}-{key}-{seed}", family=f"{stage}-{key}-{seed}", n_prompts=n_prompts,
                variants=("clean",), upstream=tuple((Requirement(u.stage, u.family, u.n_prompts, u.variants),
                                                     u.result_id) for u in upstream),
                stage_version=1, code_digest="synthetic", config={"seed": seed}, seed=seed, max_prompts=None,
                dtype="float32", model_sha256=None, relation_hash="synthetic", tables=rows,
                summary=summary or {}, run_id=run_id, committed_at=datetime.now(timezone.utc), seconds=seconds)

        rec = w.commit(record)
    if select:
        store.select([rec], run_id)
    return rec


def table(name: str, cols: dict) -> pa.Table:
    """A table of ``name``'s schema from columns (arrays are used as they are; anything else is converted; a
    column not given is null, e.g. a newer statistic the test does not look at)."""
    sch = SCHEMAS[name]
    n = len(next(iter(cols.values())))
    return pa.Table.from_arrays([c if isinstance(c := cols.get(f.name, [None] * n), (pa.Array, pa.ChunkedArray))
                                 else pa.array(c, f.type) for f in sch], schema=sch)
