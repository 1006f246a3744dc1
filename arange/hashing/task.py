"""Registers the ``hash_matching`` task with :mod:`arange.tasks`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arange.tasks import register_task

from .scenario import TASK, load_hash_scenario

register_task(TASK, load_hash_scenario, "arange.hashing.runner", "run_hash_scenario",
              "format_hash_summary",
              description="perceptual-hash matcher (imagehash, PDQ) under detection-avoidance "
              "and collision attacks",
              short="perceptual-hash matching under evasion and collision attacks")


def _fpr_rows(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The target hash's false-positive rate at each of the matcher's thresholds; ``n``: the
    pairs of distinct benign images compared."""
    matcher = card["matcher"]
    curve = next(c for c in card["fpr"] if c["hash"] == matcher["hash"])
    points = {p["threshold"]: p for p in curve["points"]}
    return [{"hash": curve["hash"], "threshold": t, "fpr": points[t]["fpr"],
             "false_positives": points[t]["false_positives"], "n": curve["n_pairs"]}
            for t in matcher["thresholds"]]


def _register_gate_metrics() -> None:
    from arange.gates import METRICS, Metric, register_metrics

    if TASK in METRICS:
        return
    attack = ("attack", "eps", "threshold")
    register_metrics(TASK, [
        Metric("evasion_rate", table="results", field="rate", higher_is_better=False,
               key_fields=attack, selectors=attack, where=(("goal", "evasion"),),
               description="images that no longer match their database entry within the "
               "threshold, verified by the reference library on the saved PNG"),
        Metric("collision_rate", table="results", field="rate", higher_is_better=False,
               key_fields=attack, selectors=attack, where=(("goal", "collision"),),
               description="images pushed within the threshold of another image's hash, "
               "verified by the reference library on the saved PNG"),
        Metric("clean_detection_rate", table="detection", field="rate", higher_is_better=True,
               key_fields=("threshold",), selectors=("threshold",),
               description="unmodified images (read back from PNG) matched to their entry"),
        Metric("false_positive_rate", table="fpr", field="fpr", higher_is_better=False,
               key_fields=("threshold",), selectors=("threshold",), rows=_fpr_rows,
               description="pairs of distinct benign images that match (pairs share images, "
               "so the interval is optimistic)"),
    ])


_register_gate_metrics()
