"""Baselines: the accepted scorecard, recorded in the repository for regression gates.

``arange baseline save SCORECARD`` writes one small JSON file: the scorecard itself (so a diff
shows which numbers moved) and, per table row and metric, the per-sample outcomes that the gate's
paired test needs, one character per sample (``1``, ``0``, or ``-`` for a sample the metric does
not count), taken from the run's ``samples.json``. The outcomes are checked against the row's own
value both when saving and when reading, so a stale or edited file cannot pass as evidence.
``arange gate SCORECARD --baseline FILE`` compares against it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from .gates import (
    BASELINE_FORMAT,
    Evidence,
    GateError,
    encode_outcomes,
    evidence_from_baseline,
    load_scorecard_evidence,
    read_json,
    row_label,
    scorecard_path,
    task_metrics,
)
from .store import atomic_write_text

log = logging.getLogger(__name__)


def default_path(card: dict[str, Any]) -> Path | None:
    """``baselines/<name>.json`` next to the scenario file the run came from, when known."""
    scenario = (card.get("provenance") or {}).get("scenario_path")
    if not isinstance(scenario, str) or not scenario:
        return None
    return Path(scenario).parent / "baselines" / f"{card.get('name')}.json"


def build_baseline(scorecard: str | Path) -> dict[str, Any]:
    """The baseline document for a scorecard (file or run folder)."""
    ev = load_scorecard_evidence(scorecard)
    metrics = task_metrics(ev.task, ev.source)
    outcomes: dict[str, list[dict[str, str]]] = {}
    missing: set[str] = set()
    for entries in metrics.values():
        for m in entries:
            rows = ev.card.get(m.table)
            if not isinstance(rows, list) or m.rows is not None or not m.rate:
                continue  # derived rows keep no per-sample outcomes; non-rates keep per_image
            per_row = outcomes.setdefault(m.table, [{} for _ in rows])
            for i in range(len(rows)):
                if m.name in per_row[i] or not m.holds(rows[i]):
                    continue
                vec = ev.outcomes(m, i)  # checked against the row's value
                if vec is None:
                    missing.add(m.name)
                    continue
                per_row[i][m.name] = encode_outcomes(vec)
    per_image: dict[str, list[dict[str, Any]]] = {}
    for entries in metrics.values():
        for m in entries:
            rows = ev.card.get(m.table)
            if m.per_image is None or not isinstance(rows, list) or m.rows is not None:
                continue
            kept = per_image.setdefault(m.table, [{} for _ in rows])
            for i in range(len(rows)):
                if m.holds(rows[i]) and (data := ev.per_image(m, i)) is not None:
                    kept[i][m.name] = {k: v.round(6).tolist() for k, v in data.items()}
    if missing:
        why = "" if ev.samples_path is not None and ev.samples_path.is_file() else \
            f" (samples file {ev.samples_path} missing)"
        log.warning("%s: no per-sample outcomes for %s%s; max_drop rules on them against "
                    "this baseline use unpaired tests", ev.source, ", ".join(sorted(missing)),
                    why)
    return {"arange_baseline": BASELINE_FORMAT,
            "saved": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "source": str(ev.source),
            "scorecard": ev.card,
            "outcomes": outcomes,
            "per_image": per_image}


def save_baseline(scorecard: str | Path, out: str | Path | None = None) -> Path:
    """Write the baseline of ``scorecard`` to ``out`` (default: :func:`default_path`)."""
    doc = build_baseline(scorecard)
    path = Path(out) if out is not None else default_path(doc["scorecard"])
    if path is None:
        raise GateError(f"{scorecard_path(scorecard)}: the scorecard does not record its "
                        "scenario file; give the baseline path with --out")
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_baseline(path: str | Path) -> Evidence:
    p = Path(path)
    raw = read_json(p, "baseline")
    if not isinstance(raw, dict) or "arange_baseline" not in raw:
        raise GateError(f"{p}: not a baseline (write one with 'arange baseline save SCORECARD')")
    return evidence_from_baseline(raw, str(p))


def describe(ev: Evidence) -> str:
    """A terminal summary of a baseline (or scorecard): what it is and its gated numbers."""
    prov = ev.card.get("provenance") or {}
    lines = [f"{ev.source}: {ev.kind} of scenario {ev.name!r} ({ev.task})",
             (f"  dataset {prov.get('dataset')} (fingerprint "
              f"{str(prov.get('dataset_fingerprint'))[:12]}), seed {prov.get('seed')}, "
              f"weights {str(prov.get('weights_sha256'))[:12]} "
              f"({prov.get('weights_source')})"),
             f"  run finished {prov.get('finished')}, arange {prov.get('arange_version')}"]
    metrics = task_metrics(ev.task, ev.source)
    for name, entries in metrics.items():
        seen: set[str] = set()
        for m in entries:
            if m.table in seen or not isinstance(ev.card.get(m.table), list):
                continue
            seen.add(m.table)
            for i, row in enumerate(ev.rows(m)):
                if not m.holds(row):
                    continue
                value, n = row.get(m.field), row.get(m.count_field)
                kept = "per-sample outcomes" if ev.outcomes(m, i) is not None \
                    else "no per-sample outcomes"
                lines.append(f"  {name:<20} {m.table:<10} {row_label(m, row):<28} "
                             f"{value:.4f} (n={n}, {kept})")
    gates = (prov.get("scenario") or {}).get("gates") or []
    lines.append(f"  gates in its scenario: {len(gates)}")
    return "\n".join(lines)
