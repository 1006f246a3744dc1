"""A one-page report of a run, as Markdown or self-contained HTML (no scripts, no remote assets).

Both formats come from the same list of sections so they never disagree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from .data import GateInfo, Run, check_counts, read_gates, rows_of, target_text

_SCALAR = (str, int, float, bool, type(None))


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(isinstance(v, float) for v in value):
        return f"{value[0]:.3f}-{value[1]:.3f}"
    return str(value)


def _ci(value: Any) -> str:
    return _fmt(tuple(value)) if isinstance(value, (list, tuple)) else ""


def _generic_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if isinstance(v, _SCALAR) and k != "params"}
            for r in rows]


def sections(run: Run) -> list[Section]:
    card = run.card or {}
    prov = run.provenance
    meta = Section("Run", table=[
        {"field": "scenario", "value": run.name},
        {"field": "task", "value": run.task},
        {"field": "target", "value": target_text(run)},
        {"field": "started", "value": prov.get("started", "")},
        {"field": "arange version", "value": prov.get("arange_version", "")},
        {"field": "git sha", "value": prov.get("git_sha") or "-"},
        {"field": "device", "value": prov.get("device", "")},
        {"field": "seed", "value": prov.get("seed", "")},
        {"field": "weights sha256", "value": prov.get("weights_sha256", "")},
        {"field": "dataset fingerprint", "value": prov.get("dataset_fingerprint", "")},
        {"field": "run folder", "value": str(run.path)},
    ])
    out = [meta]
    counts = check_counts(card)
    gates = read_gates(run)
    verdict = (f"Gates: {gates.status}. Validity checks: {counts['fail']} failed, "
               f"{counts['warn']} warned, {counts['pass']} passed, {counts['skip']} skipped.")
    out.append(Section("Verdict", text=[verdict]))
    if run.task == "classification":
        out.append(Section("Clean accuracy", table=[
            {"defense": c["defense"], "n": c["n"], "accuracy": c["accuracy"],
             "95% CI": _ci(c["accuracy_ci"])} for c in rows_of(card, "clean")]))
        out.append(Section("Robust accuracy per attack", table=[
            {"defense": r["defense"], "attack": r["attack"], "kind": r["kind"],
             "norm": r["norm"], "eps": r["eps_label"], "robust accuracy": r["robust_accuracy"],
             "95% CI": _ci(r["robust_accuracy_ci"]),
             "success rate": r["attack_success_rate"], "max perturbation":
             r["perturbation_max"], "n": r["n"],
             "unreliable": "yes" if r.get("unreliable") else ""}
            for r in rows_of(card, "results")]))
        out.append(Section("Worst case over attacks (per sample)", table=[
            {"defense": w["defense"], "norm": w["norm"], "eps": w["eps_label"],
             "robust accuracy": w["robust_accuracy"], "95% CI": _ci(w["robust_accuracy_ci"]),
             "attacks": ", ".join(w["attacks"])} for w in rows_of(card, "worst_case")]))
    else:
        out.append(Section("Results", table=_generic_rows(rows_of(card, "results"))))
    out.append(Section("Validity checks", table=[
        {"status": c.get("status", ""), "check": c.get("name", ""),
         "message": c.get("message", "")} for c in rows_of(card, "checks")]))
    out.append(_gate_section(gates))
    return out


def _gate_section(g: GateInfo) -> Section:
    s = Section(f"Gates ({g.status})")
    if g.message:
        s.text.append(g.message)
    s.table = g.rows
    return s


def to_markdown(run: Run) -> str:
    lines = [f"# arange report: {run.name}", ""]
    for s in sections(run):
        lines += [f"## {s.title}", ""]
        lines += [t for t in s.text] + ([""] if s.text else [])
        if s.table:
            cols = list(dict.fromkeys(k for row in s.table for k in row))
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "|".join("---" for _ in cols) + "|")
            for row in s.table:
                cells = [_fmt(row.get(c)).replace("|", "\\|").replace("\n", " ") for c in cols]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        elif not s.text:
            lines += ["(none)", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}
.fail{color:#b00020;font-weight:600}.warn{color:#a15c00}.pass{color:#1b5e20}"""


def to_html(run: Run) -> str:
    esc = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>arange report: {esc(run.name)}</title>", f"<style>{_CSS}</style>",
             "</head><body>", f"<h1>arange report: {esc(run.name)}</h1>"]
    for s in sections(run):
        parts.append(f"<h2>{esc(s.title)}</h2>")
        parts += [f"<p>{esc(t)}</p>" for t in s.text]
        if s.table:
            cols = list(dict.fromkeys(k for row in s.table for k in row))
            parts.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) +
                         "</tr></thead><tbody>")
            for row in s.table:
                cells = []
                for c in cols:
                    text = esc(_fmt(row.get(c)))
                    cls = f' class="{text}"' if c == "status" and text in \
                        ("fail", "warn", "pass") else ""
                    cells.append(f"<td{cls}>{text}</td>")
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</tbody></table>")
        elif not s.text:
            parts.append("<p>(none)</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
