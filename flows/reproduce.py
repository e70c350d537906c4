"""`factrecall reproduce SPEC`: every stage the claims need, the claims, and their drift since the last
reproduction of the spec (docs/METHOD.md §11). Also the Prefect flow that schedules serve."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.states import Failed

from factrecall.storage.reproductions import (
    claims_of_results,
    previous_reproduction,
    read_baseline,
    write_reproduction,
)
from factrecall.tasks.reproduction import Spec, drift_rows, load_spec, verdict_counts

from .sweep import sweep

__all__ = ["reproduce", "reproduce_flow"]


def _summary(spec: Spec, counts: dict, n_partitions: int, compared_with: str | None, drifted: list[dict],
             refused: dict) -> tuple[str, str]:
    """(verdict, one-line summary) of a reproduction."""
    n = sum(counts.values())
    line = (f"{spec.name}: {n} claims on {n_partitions} partition(s): {counts['holds']} hold, "
            f"{counts['does not']} do not, {counts['inconclusive']} inconclusive, {counts['not tested']} not tested")
    if refused:
        line += f"; refused: {', '.join(refused)}"
    if compared_with is None:
        return ("refused" if refused else "first"), line + "; first reproduction of this spec: nothing to compare with"
    if drifted:
        shown = "; ".join(f"{d['claim']} {d['model']}/{d['relation']}/shot={d['shot']} ({d['reason']})"
                          for d in drifted[:3])
        more = f"; and {len(drifted) - 3} more" if len(drifted) > 3 else ""
        return "drift", line + f"; DRIFT in {len(drifted)} statistic(s) since {compared_with}: {shown}{more}"
    return ("refused" if refused else "no drift"), line + f"; no drift since {compared_with}"


def _recorder(spec: Spec, baseline: tuple[Path, list[dict]] | None, started: datetime):
    def record(store, catalog, manifest: dict) -> dict:
        ids = [p["result_id"] for p in manifest["partitions"] if p["stage"] == "claims"]
        now = [{**row, "run_id": manifest["run_id"], "spec": spec.name, "domain": spec.domains.get(row["relation"])}
               for row in claims_of_results(store, catalog, ids)]
        if baseline is not None:
            compared_with, before = f"baseline:{baseline[0]}", baseline[1]
        else:
            compared_with, before = previous_reproduction(store, spec.name)
        drift = drift_rows(before, now, spec.tolerance_of) if compared_with is not None else []
        drifted = [d for d in drift if d["drifted"]]
        counts = verdict_counts(now)
        verdict, line = _summary(spec, counts, len(ids), compared_with, drifted, manifest["refused"])
        reproduction = {
            "run_id": manifest["run_id"], "spec": spec.name, "spec_version": spec.version, "spec_sha256": spec.sha256,
            "spec_text": spec.text, "started_at": started, "finished_at": datetime.now(timezone.utc),
            "compared_with": compared_with, "n_claims": len(now), "n_holds": counts["holds"],
            "n_does_not": counts["does not"], "n_inconclusive": counts["inconclusive"],
            "n_not_tested": counts["not tested"], "n_drifted": len(drifted), "n_refused": len(manifest["refused"]),
            "verdict": verdict, "summary": line}
        write_reproduction(store, reproduction,
                           now, [{**d, "run_id": manifest["run_id"], "spec": spec.name, "compared_with": compared_with}
                                 for d in drift])
        return {"reproduction": reproduction, "claims": now, "drift": drifted}
    return record


def reproduce(spec_ref: str, store_root: str, baseline: str | None = None, device: str | None = None,
              show_progress: bool = True, force: bool = False, checked: list[str] | None = None,
              cluster: dict | None = None) -> dict:
    """Run the spec's claims (and every stage they need, reusing what is stored), record the claims and
    their drift; returns the run manifest with ``reproduction``, ``claims`` and ``drift`` (drifted rows)."""
    spec = load_spec(spec_ref)
    started = datetime.now(timezone.utc)
    path = Path(baseline).resolve() if baseline else spec.baseline
    pinned = (path, read_baseline(path)) if path is not None else None  # a bad file fails before any write
    return sweep("claims", list(spec.models), list(spec.relations), list(spec.shots), store_root, spec.settings,
                 spec.dtype, device, show_progress, force, checked, kind="reproduce",
                 after=_recorder(spec, pinned, started), domains=spec.file_domains, cluster=cluster,
                 model_dtypes=spec.model_dtypes)


@flow(name="factrecall-reproduce", flow_run_name="reproduce {spec_ref}", retries=0, log_prints=False)
def reproduce_flow(spec_ref: str, store_root: str, baseline: str | None = None, device: str | None = None,
                   show_progress: bool = False, force: bool = False, checked: list[str] | None = None,
                   cluster: dict | None = None) -> dict:
    """The reproduction as a Prefect flow (what `factrecall reproduce` runs and `factrecall schedule` serves).
    Returns the reproduction's row (verdict, counts, summary line, claims, drifted rows); a reproduction that
    drifted or refused a model ends in a Failed state carrying the same data, so that Prefect (its UI, its
    automations and notifications) flags it like the CLI's exit code does."""
    manifest = reproduce(spec_ref, store_root, baseline, device, show_progress, force, checked, cluster)
    payload = {"run_id": manifest["run_id"], **manifest["reproduction"], "refused": manifest["refused"],
               "drift": manifest["drift"], "claims": manifest["claims"]}
    if payload["verdict"] in ("drift", "refused"):
        return Failed(message=payload["summary"], data=payload)
    return payload
