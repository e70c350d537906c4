"""The reproduction report as one self-contained HTML page and a Markdown summary (pure: rows in, text out).

Sections (ids in ``SECTIONS``): the verdict, the claim matrix (models x relations x shots, coloured by
verdict, value and interval in each cell, the rule on hover), claims by domain, the drift history, the
figures (head heatmaps and sets, β bars, push by layer, p(answer) by layer, mitigation before/after) and
the provenance. Images are embedded as ``data:`` URIs: the page makes no request.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict

from .claims import CLAIMS

__all__ = ["SECTIONS", "claim_matrix_html", "markdown_summary", "render_html"]

SECTIONS = ("verdict", "claim-matrix", "domains", "drift", "figures", "provenance")

_COLOURS = {"holds": "#1a7f37", "does not": "#cf222e", "inconclusive": "#bf8700", "not tested": "#8c959f"}
_MARK = {"holds": "✓", "does not": "✗", "inconclusive": "?", "not tested": "·"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#1f2328;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.verdict{font-size:16px;padding:10px 14px;border-radius:6px;background:#f6f8fa;border-left:6px solid var(--c)}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;
vertical-align:top}th{background:#f6f8fa;font-weight:600}
td.cell{color:#fff;text-align:center;min-width:88px;font-variant-numeric:tabular-nums}
td.cell small{display:block;opacity:.9;font-size:11px}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:4px;color:#fff}
figure{display:inline-block;margin:6px;vertical-align:top}figure img{max-width:400px;border:1px solid #d0d7de}
figcaption{font-size:12px;color:#57606a}code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:320px}.muted{color:#57606a}
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(x, fmt="{:+.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def claim_matrix_html(claims: list[dict]) -> str:
    """A table: a row per (model, relation, shot) with its domain, a column per claim; each cell coloured by
    its verdict, with the value and interval, and the claim's statistic, rule and note in its title."""
    by_key: dict[tuple, dict] = defaultdict(dict)
    domain = {}
    for r in claims:
        key = (r["model"], r["relation"], int(r["shot"]))
        by_key[key][r["claim"]] = r
        domain[key] = r.get("domain")
    head = "".join(f"<th title='{_esc(c.statistic)}'>{c.step}. {_esc(c.text)}</th>" for c in CLAIMS)
    rows = []
    for key in sorted(by_key):
        cells = []
        for c in CLAIMS:
            r = by_key[key].get(c.name)
            if r is None:
                cells.append("<td></td>")
                continue
            interval = f"[{_num(r.get('lo'), '{:.3f}')}, {_num(r.get('hi'), '{:.3f}')}]"
            extra = "".join(
                f", {label} {_num(r.get(k), '{:.4g}')}" for k, label in (("threshold", "threshold"),
                                                                        ("null_value", "null"),
                                                                        ("value_all", "over every prompt"))
                if r.get(k) is not None)
            title = f"{c.statistic}: {_num(r.get('value'), '{:.4f}')} {interval}, n={r.get('n')}{extra}. " \
                    f"Rule: {c.rule}. {r.get('note') or ''}"
            cells.append(f"<td class='cell' data-claim='{c.name}' data-verdict='{_esc(r['verdict'])}' "
                         f"style='background:{_COLOURS[r['verdict']]}' title='{_esc(title)}'>"
                         f"{_MARK[r['verdict']]} {_esc(r['verdict'])}<small>{_num(r.get('value'), '{:.3f}')} "
                         f"{interval}</small></td>")
        rows.append(f"<tr><td>{_esc(key[0])}</td><td>{_esc(key[1])}</td><td>{_esc(domain[key])}</td>"
                    f"<td>{key[2]}</td>{''.join(cells)}</tr>")
    legend = "".join(f"<span style='background:{c}'>{_MARK[v]} {v}</span>" for v, c in _COLOURS.items())
    return (f"<p class='legend'>{legend}</p><table class='matrix'><tr><th>model</th><th>relation</th><th>domain</th>"
            f"<th>shot</th>{head}</tr>{''.join(rows)}</table>")


def _count_cells(counts: list[dict], by: str, key: str) -> dict[str, dict[str, str]]:
    """{row label: {claim: "holds/tested"}} from the ``report_claim_counts`` rows grouped ``by`` domain or setting."""
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for r in counts:
        if r["grouped_by"] == by and r["n_tested"]:
            table[f"{r['model']} · {r[key]}"][r["claim"]] = f"{r['n_holds']}/{r['n_tested']}"
    return table


def _counts_html(counts: list[dict], by: str, key: str, note: str) -> str:
    table = _count_cells(counts, by, key)
    head = "".join(f"<th>{_esc(c.text)}</th>" for c in CLAIMS)
    rows = "".join(f"<tr><td>{_esc(label)}</td>" + "".join(f"<td>{cells.get(c.name, '')}</td>" for c in CLAIMS)
                   + "</tr>" for label, cells in table.items())
    return f"<p class='muted'>{note}</p><table><tr><th>model · {by}</th>{head}</tr>{rows}</table>"


def _drift_html(history: list[dict], drift: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(h['run_id'])}</td><td>{_esc(h['started_at'])}</td><td>{_esc(h['verdict'])}</td>"
        f"<td>{h['n_holds']}</td><td>{h['n_does_not']}</td><td>{h['n_inconclusive']}</td><td>{h['n_drifted']}</td>"
        f"<td>{_esc(h['compared_with'] or '–')}</td></tr>" for h in history)
    out = ("<table><tr><th>run</th><th>started (UTC)</th><th>verdict</th><th>holds</th><th>does not</th>"
           f"<th>inconclusive</th><th>drifted</th><th>compared with</th></tr>{rows}</table>")
    moved = [d for d in drift if d["drifted"]]
    if moved:
        out += ("<p>Drifted in the latest reproduction:</p><table><tr><th>model</th><th>relation</th><th>shot</th>"
                "<th>claim</th><th>before</th><th>now</th><th>tolerance</th><th>why</th></tr>" + "".join(
                    f"<tr><td>{_esc(d['model'])}</td><td>{_esc(d['relation'])}</td><td>{d['shot']}</td>"
                    f"<td>{_esc(d['claim'])}</td><td>{_num(d['before'], '{:.4f}')}</td><td>{_num(d['now'], '{:.4f}')}"
                    f"</td><td>{d['tolerance']:g}</td><td>{_esc(d['reason'])}</td></tr>" for d in moved) + "</table>")
    elif history:
        out += "<p>No statistic drifted in the latest reproduction.</p>"
    return out


def _figures_html(figures: list[tuple[str, str, bytes]], omitted: int) -> str:
    """``figures``: (group title, caption, PNG bytes)."""
    groups: dict[str, list] = defaultdict(list)
    for group, caption, png in figures:
        groups[group].append((caption, png))
    out = []
    for group, items in groups.items():
        imgs = "".join(f"<figure><img alt='{_esc(c)}' src='data:image/png;base64,{base64.b64encode(p).decode()}'>"
                       f"<figcaption>{_esc(c)}</figcaption></figure>" for c, p in items)
        out.append(f"<h3>{_esc(group)}</h3>{imgs}")
    if omitted:
        out.append(f"<p class='muted'>Figures of {omitted} more partition(s) are left out to keep the page small: "
                   "`factrecall plots` writes them all as PNG files.</p>")
    return "".join(out) or "<p class='muted'>No figures stored.</p>"


def _provenance_html(prov: dict) -> str:
    return f"<pre>{_esc(json.dumps(prov, indent=2, sort_keys=True, default=str))}</pre>"


def render_html(title: str, verdict: dict | None, claims: list[dict], counts: list[dict], history: list[dict],
                drift: list[dict],
                figures: list[tuple[str, str, bytes]], omitted: int, provenance: dict, generated: str) -> str:
    colour = {"no drift": "#1a7f37", "first": "#0969da", "drift": "#cf222e", "refused": "#cf222e"}
    line = verdict["summary"] if verdict else "No reproduction of this spec yet: the claims shown are the store's current ones."
    c = colour.get((verdict or {}).get("verdict"), "#8c959f")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_CSS}</style></head><body>
<h1>{_esc(title)}</h1><p class="muted">factrecall reproduction report · generated {_esc(generated)} UTC</p>
<section id="verdict"><div class="verdict" style="--c:{c}">{_esc(line)}</div></section>
<section id="claim-matrix"><h2>Claim matrix</h2>{claim_matrix_html(claims)}</section>
<section id="domains"><h2>How often each claim holds</h2>{_counts_html(counts, "setting", "setting",
    "Partitions where the claim holds / partitions where it was tested, every domain pooled.")}
{_counts_html(counts, "domain", "domain", "The same by domain, every shot pooled "
              "(`factrecall query --named claims_by_domain` splits zero- and few-shot).")}</section>
<section id="drift"><h2>Drift history</h2>{_drift_html(history, drift)}</section>
<section id="figures"><h2>Figures</h2>{_figures_html(figures, omitted)}</section>
<section id="provenance"><h2>Provenance</h2>{_provenance_html(provenance)}</section>
</body></html>
"""


def _counts_markdown(counts: list[dict]) -> list[str]:
    table = _count_cells(counts, "setting", "setting")
    if not table:
        return []
    return (["Partitions where each claim holds / where it was tested:", "",
             "| model · setting | " + " | ".join(c.name for c in CLAIMS) + " |", "|---|" + "---|" * len(CLAIMS)]
            + [f"| {label} | " + " | ".join(cells.get(c.name, "") for c in CLAIMS) + " |"
               for label, cells in table.items()] + [""])


def markdown_summary(title: str, verdict: dict | None, claims: list[dict], counts: list[dict] = ()) -> str:
    """The verdict, how often each claim holds per model and setting (from ``report_claim_counts`` rows), and the
    claim matrix as a Markdown table (✓ holds, ✗ does not, ? inconclusive, · not tested)."""
    by_key: dict[tuple, dict] = defaultdict(dict)
    for r in claims:
        by_key[(r["model"], r["relation"], int(r["shot"]))][r["claim"]] = r
    lines = [f"## {title}", "", (verdict or {}).get("summary", "No reproduction of this spec yet."), "",
             *_counts_markdown(counts),
             "| model | relation | shot | " + " | ".join(c.name for c in CLAIMS) + " |",
             "|---|---|---|" + "---|" * len(CLAIMS)]
    for key in sorted(by_key):
        cells = []
        for c in CLAIMS:
            r = by_key[key].get(c.name)
            cells.append("" if r is None else _MARK[r["verdict"]] + ("" if r.get("value") is None
                                                                     else f" {r['value']:.3g}"))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    lines += ["", "✓ holds · ✗ does not · ? inconclusive (the 95% interval straddles the threshold) · "
              "· not tested; numbers are each claim's statistic (docs/METHOD.md §10)."]
    return "\n".join(lines) + "\n"
