"""Write throughput of one capture partition: the Delta Lake store against the previous store's way of
writing (one Parquet file per table, renamed into place, a JSON commit record), same tables, one process.

    python benchmarks/store_write.py [--model smollm2-135m] [--n 225] [--repeats 3]

The partition's tables are computed once (capture + encoders, in memory), then written by each writer
into a fresh store (the first partition: the Delta store creates its tables) and ``--repeats`` more times
as further partitions of that store (best of them: a sweep's steady state). Prints MiB/s of Parquet
written and the ratios new / previous.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import torch


def previous_store_write(root: Path, key: tuple, tables: dict[str, list]) -> None:
    """What the previous store did for a partition: stream each table into a staging Parquet file, rename
    it into its Hive folder, then write the commit record (atomic JSON)."""
    from factrecall.storage.parquet import parquet_options

    staging = root / "_staging" / uuid.uuid4().hex
    part = "model={}/relation={}/shot={}".format(*key)
    for name, batches in tables.items():
        path = staging / name / "part-0.parquet"
        path.parent.mkdir(parents=True)
        with pq.ParquetWriter(path, batches[0].schema, **parquet_options(batches[0].schema)) as w:
            for b in batches:
                w.write_table(b)
        dest = root / name / part
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / name, dest)
    record = root / "_commits" / part / "capture.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tables": sorted(tables)}))
    os.replace(tmp, record)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=225)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from factrecall.stages import STAGES
    from factrecall.storage.catalog import ResultRecord
    from factrecall.storage.store import Store
    from factrecall.tasks.capture_stage import capture_prompts
    from factrecall.tasks.models import load_model
    from factrecall.tasks.prompts import build_prompts
    from factrecall.tasks.relations import paper_capital
    from factrecall.tasks.tokenization import tokenize_prompts

    lm = load_model(args.model)
    stage = STAGES["capture"]
    prompts = tokenize_prompts(lm.tokenizer, build_prompts(paper_capital(), 0, 0, max_prompts=args.n), lm.max_length)
    tables: dict[str, list] = {}
    for part in capture_prompts(lm, prompts, 16):
        for name, t in stage.encode(part).items():
            tables.setdefault(name, []).append(t)
    key = (lm.model_id, "paper.capital", 0)

    def new_store_write(root: Path, shot: int) -> None:
        store = Store(root)
        k = (key[0], key[1], shot)
        with store.writing(), store.writer("capture", k, stage.tables) as w:
            for name, batches in tables.items():
                for b in batches:
                    w.write(name, b)

            def record(result_id, rows):
                from datetime import datetime, timezone
                return ResultRecord(result_id, "capture", *k, "h", "f", args.n, ("clean",), (), 1, "d", {}, 0, None,
                                    "float32", None, "r", rows, {}, "bench", datetime.now(timezone.utc), 0.0)

            rec = w.commit(record)
        store.select([rec], "bench")

    def timed(fn) -> tuple[float, float, int]:
        """(first partition into an empty store, best of --repeats further partitions into it, Parquet bytes of one)."""
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t = time.perf_counter()
            fn(root, 0)
            first = time.perf_counter() - t
            size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
            times = []
            for shot in range(1, args.repeats + 1):
                t = time.perf_counter()
                fn(root, shot)
                times.append(time.perf_counter() - t)
        return first, min(times), size

    first_old, t_old, size_old = timed(lambda root, shot: previous_store_write(root, (key[0], key[1], shot), tables))
    first_new, t_new, size_new = timed(new_store_write)
    mb_old, mb_new = size_old / 2**20, size_new / 2**20
    print(f"{lm.model_id}: capture partition of {args.n} prompts, {len(tables)} tables, {mb_new:.1f} MiB of Parquet")
    print(f"previous store (Parquet + rename + JSON record): {t_old:.2f} s ({mb_old / t_old:.0f} MiB/s); "
          f"first partition {first_old:.2f} s")
    print(f"Delta Lake store (Parquet + one transaction per table + result record + selection): {t_new:.2f} s "
          f"({mb_new / t_new:.0f} MiB/s); first partition (creates the tables) {first_new:.2f} s")
    print(f"ratio new / previous throughput, a partition into a store that has its tables (a sweep's steady "
          f"state): {t_old / t_new:.2f}x; the first partition: {first_old / first_new:.2f}x")


if __name__ == "__main__":
    main()
