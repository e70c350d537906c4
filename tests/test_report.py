"""The report of a reproduction that has no claims (every model refused) still renders and says so."""

from __future__ import annotations

from datetime import datetime, timezone

from factrecall.storage.report import write_report
from factrecall.storage.store import Store


def test_a_reproduction_without_claims_gets_a_report(tmp_path):
    store = Store(tmp_path / "store")
    now = datetime.now(timezone.utc)
    summary = "spec-x: 0 claims on 0 partition(s); refused: m"
    with store.writing():
        store.append_records("reproductions", [{
            "run_id": "r1", "spec": "spec-x", "spec_version": 1, "spec_sha256": "0" * 64, "spec_text": "name = 'x'",
            "started_at": now, "finished_at": now, "compared_with": None, "n_claims": 0, "n_holds": 0,
            "n_does_not": 0, "n_inconclusive": 0, "n_not_tested": 0, "n_drifted": 0, "n_refused": 1,
            "verdict": "refused", "summary": summary}])
    html, md = write_report(store.root, tmp_path / "out" / "report.html", "spec-x")
    page = html.read_text()
    assert summary in page and '<section id="claim-matrix">' in page
    assert summary in md.read_text()
    assert "Partitions where each claim holds" not in md.read_text()  # nothing to count
