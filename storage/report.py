"""Writes the HTML report and its Markdown summary (``tasks.report`` renders them) from a store."""

from __future__ import annotations

import json
import os

import pyarrow as pa
from datetime import datetime, timezone
from pathlib import Path

from .export import size_axis_png
from .location import store_location
from .query import QueryError, internal_query, open_store

__all__ = ["FIGURES", "write_report"]

#: The figures the report shows per partition, in order: (stage, plot name, caption).
FIGURES = (
    ("heads", "effect_heatmap", "path-patching effect per head (head set marked)"),
    ("heads", "attention_heatmap", "attention END→S per head"),
    ("mlp", "beta_by_head", "β per head (MLP as an activation)"),
    ("mlp", "push_by_layer", "push of the task-aware component by layer"),
    ("final_layer", "lens_by_layer", "p(answer) by layer"),
    ("final_layer", "mitigation", "mitigation before/after (held out)"),
)


def _json(text):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def write_report(root: Path | str, out: Path, spec: str | None = None, max_partitions: int = 6) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and ``out`` with ``.md`` (Markdown summary) for the latest reproduction of ``spec``
    (or, without one, the store's current claims); figures of at most ``max_partitions`` partitions."""
    from factrecall.tasks.report import markdown_summary, render_html

    view = open_store(root)
    try:
        history, drift, verdict = [], [], None
        if spec:
            history = view.pl(internal_query("report_reproductions"), {"spec": spec}).to_dicts()
        if history:
            verdict = history[0]
            claims = view.pl(internal_query("report_reproduction_claims"), {"run_id": verdict["run_id"]}).to_dicts()
            drift = view.pl(internal_query("report_drift"), {"run_id": verdict["run_id"]}).to_dicts()
        elif spec:
            raise QueryError(f"no reproduction of spec {spec!r} in {root}; run `factrecall reproduce {spec}` first")
        else:
            claims = [] if "claims" in view.missing else view.pl(internal_query("report_current_claims")).to_dicts()
            if not claims:
                raise QueryError(f"no claims in {root}; run `factrecall reproduce paper-quick` first")
        keys = sorted({(c["model"], c["relation"], int(c["shot"])) for c in claims})
        shown = set(keys[:max_partitions])
        ids = sorted({c["source_result_id"] for c in claims if (c["model"], c["relation"], int(c["shot"])) in shown})
        stored = {(r["model"], r["relation"], r["shot"], r["stage"], r["name"]): r["png"]
                  for r in view.pl(internal_query("report_figures"), {"ids": ids}).to_dicts()} if ids else {}
        figures = [(f"{m} · {rel} · shot {s}", caption, stored[(m, rel, s, stage, name)])
                   for (m, rel, s) in keys[:max_partitions] for stage, name, caption in FIGURES
                   if (m, rel, s, stage, name) in stored]
        counts = []
        if claims:  # (a reproduction whose every model was refused has none)
            view.con.register("_report_claims", pa.Table.from_pylist(claims))  # the rows shown, counted in SQL
            counts = view.pl(internal_query("report_claim_counts")).to_dicts()
        size = size_axis_png(view)
        if size is not None:
            figures.append(("Size axis: the store's current claims, every model of known size",
                            "each claim's statistic (mean over relations; band: their range) against parameter count",
                            size))
        provenance = {"store": str(store_location(root))}
        if verdict:
            run = view.pl(internal_query("report_run"), {"run_id": verdict["run_id"]}).to_dicts()
            if run:
                r = run[0]
                provenance |= {"run_id": r["run_id"], "code_version": r["code_version"], "python": r["python"],
                               "seed": r["seed"], "packages": _json(r["packages"]), "settings": _json(r["config"]),
                               "model_sha256": _json(r["model_sha256"]), "dataset_sha256": _json(r["relation_sha256"]),
                               "store_versions": _json(r["versions"])}
            provenance |= {"spec": spec, "spec_sha256": verdict["spec_sha256"], "spec_text": verdict["spec_text"]}
    finally:
        view.close()
    title = f"factrecall: reproduction of {spec}" if spec else "factrecall: current claims"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    page = render_html(title, verdict, claims, counts, history, drift, figures, max(0, len(keys) - max_partitions),
                       provenance, generated)
    md = out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, page), (md, markdown_summary(title, verdict, claims, counts))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a report
    return out, md
