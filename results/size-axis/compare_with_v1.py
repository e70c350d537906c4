"""Verdicts of the size axis under the current claim rules against the first rules (claims version 1).

    .venv/bin/python results/size-axis/compare_with_v1.py [--changes] [--models m1,m2]

Reads the two folders of published claims (`results/size-axis/` and `results/size-axis-claims-v1/`) without a store
and prints, per claim, the verdict counts before and after over the partitions both hold, then (with --changes)
every partition whose verdict changed, with the new rule's statistic and note (why).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from factrecall.storage.published import open_published
from factrecall.tasks.claims import CLAIMS, VERDICTS

HERE = Path(__file__).resolve().parent


def claims(folder: Path) -> pl.DataFrame:
    with open_published(folder) as view:
        for line in view.warnings():
            print(f"warning: {line}")
        return view.pl("SELECT model, relation, shot, claim, verdict, value, lo, hi, n, note FROM claims")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", action="store_true", help="list every partition whose verdict changed")
    ap.add_argument("--models", default=None, help="only these models (comma-separated)")
    ap.add_argument("--after", type=Path, default=HERE, help="the folder of current claims (default: this one)")
    args = ap.parse_args()
    key = ["model", "relation", "shot", "claim"]
    after, before = claims(args.after), claims(HERE.parent / "size-axis-claims-v1")
    both = after.join(before.select(*key, pl.col("verdict").alias("before"), pl.col("value").alias("value_v1")),
                      on=key, how="inner")
    if args.models:
        both = both.filter(pl.col("model").is_in(args.models.split(",")))
    models = sorted(both["model"].unique())
    print(f"{both.height // len(CLAIMS)} partitions in both folders ({', '.join(models)})\n")
    short = {"holds": "holds", "does not": "does not", "inconclusive": "inconcl.", "not tested": "not tested"}
    print("| claim | " + " | ".join(f"{short[v]} before → after" for v in VERDICTS) + " | changed |")
    print("|---|" + "---|" * (len(VERDICTS) + 1))
    for c in CLAIMS:
        rows = both.filter(pl.col("claim") == c.name)
        cells = [f"{(rows['before'] == v).sum()} → {(rows['verdict'] == v).sum()}" for v in VERDICTS]
        changed = (rows["before"] != rows["verdict"]).sum()
        print(f"| {c.name} | " + " | ".join(cells) + f" | {changed} of {rows.height} |")
    if args.changes:
        moved = both.filter(pl.col("before") != pl.col("verdict")).sort(key)
        print(f"\n{moved.height} changed verdicts:")
        for r in moved.iter_rows(named=True):
            value = "n/a" if r["value"] is None else f"{r['value']:.3g}"
            interval = "" if r["lo"] is None else f" [{r['lo']:.3g}, {r['hi']:.3g}]"
            print(f"- {r['model']} {r['relation']} shot {r['shot']} {r['claim']}: {r['before']} -> {r['verdict']} "
                  f"({value}{interval}, n = {r['n']}): {r['note']}")


if __name__ == "__main__":
    main()
