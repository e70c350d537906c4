"""The whole sweep, every stage, into a fresh store: serial and on a local Dask cluster, in one process.

    python benchmarks/sweep.py [--models smollm2-135m,gemma3-270m] [--relations paper.capital,lre.country_language]
                               [--shots 0,1,2] [--max-prompts 60] [--workers 2] [--no-dask]

Runs the claims stage (and so capture, heads, mlp and final_layer) over models x relations x shots, first serially,
then with `--runner dask --workers N` into another fresh store, and prints: wall time of each, their ratio, the
seconds each stage recorded (summed over partitions, per model), model load time, and whether the two stores hold
the same claims (values to 1e-6). With 2 cores a 2-worker cluster gains little (each worker gets one thread): the
per-partition times say what more cores would give (printed as the estimate for N workers with the threads each
partition had here, i.e. N times the cores).
The default is the paper's sweep on the two small models (hours on 2 cores); pass fewer relations to sample it.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

PAPER = ("paper.capital,lre.country_capital_city,lre.country_language,pararel.P36,lre.object_superclass,"
         "lre.word_sentiment,lre.adj_antonym,lre.adj_comparative,lre.name_gender")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--relations", default=PAPER)
    ap.add_argument("--shots", default="0,1,2")
    ap.add_argument("--max-prompts", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    models, relations = args.models.split(","), args.relations.split(",")
    shots = [int(s) for s in args.shots.split(",")]

    from factrecall.flows.stage_flow import stage_flow
    from factrecall.storage.query import connect

    def run(root: str, cluster: dict | None) -> float:
        t = time.perf_counter()
        manifest = stage_flow("claims", models, relations, shots, root, {"max_prompts": args.max_prompts},
                              show_progress=False, cluster=cluster)
        if manifest["refused"]:
            raise SystemExit(f"refused: {manifest['refused']}")
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        serial_root, dask_root = f"{tmp}/serial", f"{tmp}/dask"
        serial = run(serial_root, None)
        n = len(models) * len(relations) * len(shots)
        print(f"sweep: {len(models)} model(s) x {len(relations)} relation(s) x {len(shots)} shot(s) = {n} partitions, "
              f"at most {args.max_prompts} prompts, every stage")
        print(f"serial: {serial / 60:.1f} min")
        con = connect(serial_root)
        per_stage: dict[str, dict[str, float]] = defaultdict(dict)
        partitions: dict[str, list[float]] = defaultdict(list)
        for model, stage, seconds in con.execute("SELECT model, stage, sum(seconds) FROM results GROUP BY ALL").fetchall():
            per_stage[model][stage] = seconds
        for model, seconds in con.execute("SELECT model, sum(seconds) FROM results GROUP BY model, relation, shot").fetchall():
            partitions[model].append(seconds)
        for model, stages in sorted(per_stage.items()):
            parts = ", ".join(f"{s} {stages.get(s, 0) / 60:.1f}" for s in ("capture", "heads", "mlp", "final_layer", "claims"))
            print(f"  {model}: {sum(stages.values()) / 60:.1f} min of stage time ({parts} min)")
        everything = sorted((s for ps in partitions.values() for s in ps), reverse=True)
        bins = [0.0] * args.workers  # longest partitions first onto the least loaded worker: an ideal N-core cluster
        for s in everything:
            bins[bins.index(min(bins))] += s
        print(f"  estimate with {args.workers} workers of {torch_threads()} threads each, as here (2x the cores; "
              f"partitions longest first): {max(bins) / 60:.1f} min ({sum(everything) / max(bins):.2f}x)")
        if args.no_dask:
            return
        dask = run(dask_root, {"workers": args.workers, "address": None, "threads": None})
        print(f"dask, {args.workers} local workers: {dask / 60:.1f} min; serial / dask = {serial / dask:.2f}x")
        query = "SELECT model, relation, shot, claim, verdict, value FROM claims ORDER BY ALL"
        a, b = connect(serial_root).execute(query).fetchall(), connect(dask_root).execute(query).fetchall()

        def same(x, y) -> bool:  # to float32 rounding: workers with other thread counts sum in another order
            u, v = x[5], y[5]
            close = (u is None and v is None) or (u is not None and v is not None and
                                                   (abs(u - v) <= 1e-5 * max(1.0, abs(u)) or (math.isnan(u) and math.isnan(v))))
            return x[:5] == y[:5] and close

        differ = [(x, y) for x, y in zip(a, b) if not same(x, y)]
        worst = max((abs(x[5] - y[5]) / max(1.0, abs(x[5])) for x, y in zip(a, b)
                     if x[5] is not None and y[5] is not None and not math.isnan(x[5]) and not math.isnan(y[5])), default=0.0)
        print(f"claims: {len(a)} serial, {len(b)} dask; same verdicts and values to 1e-5 (relative): "
              f"{len(a) == len(b) and not differ}; largest relative difference {worst:.1e}")
        for x, y in differ[:5]:
            print(f"  differs: {x} vs {y}")

if __name__ == "__main__":
    main()
