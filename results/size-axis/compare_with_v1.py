"""Verdicts of the size axis under the current claim rules against the first rules (claims version 1).

    .venv/bin/python results/size-axis/compare_with_v1.py [--changes] [--models m1,m2] [--table]

Reads the two folders of published claims (`results/size-axis/` and `results/size-axis-claims-v1/`) without a store
and prints, per claim, the verdict counts before and after over the partitions both hold, then (with --changes)
every partition whose verdict changed, with the new rule's statistic and note (why). With --table it prints the
README's tables instead: per claim and model, zero-shot and few-shot, the partitions where the claim holds / those
where it was tested, and the mean statistic over the tested ones.
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
    ap.add_argument("--table", action="store_true", help="print the README's holds/tested tables of --after")
    args = ap.parse_args()
    key = ["model", "relation", "shot", "claim"]
    if args.table:
        return table(claims(args.after))
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


def table(rows: pl.DataFrame) -> None:
    models = sorted(rows["model"].unique())
    for setting, shots in (("zero-shot", [0]), ("few-shot", [1, 2])):
        part = rows.filter(pl.col("shot").is_in(shots))
        print(f"\n| claim (statistic), {setting} | " + " | ".join(models) + " |")
        print("|---|" + "---|" * len(models))
        for c in CLAIMS:
            cells = []
            for m in models:
                r = part.filter((pl.col("claim") == c.name) & (pl.col("model") == m))
                tested = r.filter(pl.col("verdict") != "not tested")
                mean = tested["value"].drop_nulls().mean()
                holds = (tested["verdict"] == "holds").sum()
                cells.append(f"{holds}/{tested.height}" + (f" ({mean:.2g})" if mean is not None else ""))
            print(f"| {c.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
