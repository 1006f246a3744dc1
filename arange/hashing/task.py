"""The ``hash_matching`` task: a perceptual-hash matcher under detection-avoidance and
collision attacks (hooks in :mod:`.runner`, scenario in :mod:`.scenario`, scorecard in
:mod:`.scorecard`), and its gate metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arange.core.task import Task, register_task

from .scenario import TASK, load_hash_scenario


class HashTask(Task):
    name = TASK
    description = ("perceptual-hash matcher (imagehash, PDQ) under detection-avoidance and "
                   "collision attacks")
    short = "perceptual-hash matching under evasion and collision attacks"
    unit = "img"
    libraries = ("imagehash", "pdqhash", "pillow", "numpy", "scipy", "PyWavelets",
                 "scikit-image", "scikit-learn", "pydantic")
    runner = "arange.hashing.runner"
    scorecard_model = "arange.hashing.scorecard:HashScorecard"

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        return load_hash_scenario(raw, source, folder)


register_task(HashTask())


def _fpr_rows(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The target hash's false-positive rate at each of the matcher's thresholds; ``n``: the
    pairs of distinct benign images compared."""
    matcher = card["matcher"]
    curve = next(c for c in card["fpr"] if c["hash"] == matcher["hash"])
    points = {p["threshold"]: p for p in curve["points"]}
    return [{"hash": curve["hash"], "threshold": t, "fpr": points[t]["fpr"],
             "false_positives": points[t]["false_positives"], "n": curve["n_pairs"]}
            for t in matcher["thresholds"]]


def _corpus_rows(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The corpus's false-positive rate at each of the matcher's thresholds; ``n``: the pairs
    counted (all, or the stated sample)."""
    corpus = card.get("corpus")
    if not corpus:
        return []
    points = {p["threshold"]: p for p in corpus["points"]}
    return [{"hash": corpus["hash"], "threshold": t, "fpr": points[t]["fpr"],
             "false_positives": points[t]["false_positives"], "n": corpus["n_pairs"]}
            for t in card["matcher"]["thresholds"]]


def _verified(row: Mapping[str, Any], card: Mapping[str, Any], samples: Mapping[str, Any]
              ) -> list[bool | None]:
    """Per image: the attack's success as the reference library verified it."""
    return [bool(v) for v in samples["jobs"][row["job_id"]]["success"]]


def _register_gate_metrics() -> None:
    from arange.gates import METRICS, Metric, register_metrics

    if TASK in METRICS:
        return
    attack = ("attack", "eps", "threshold")
    register_metrics(TASK, [
        Metric("evasion_rate", table="results", field="rate", higher_is_better=False,
               key_fields=attack, selectors=attack, where=(("goal", "evasion"),),
               outcomes=_verified,
               description="images that no longer match their database entry within the "
               "threshold, verified by the reference library on the saved PNG"),
        Metric("collision_rate", table="results", field="rate", higher_is_better=False,
               key_fields=attack, selectors=attack, where=(("goal", "collision"),),
               outcomes=_verified,
               description="images pushed within the threshold of another image's hash, "
               "verified by the reference library on the saved PNG"),
        Metric("clean_detection_rate", table="detection", field="rate", higher_is_better=True,
               key_fields=("threshold",), selectors=("threshold",),
               description="unmodified images (read back from PNG) matched to their entry"),
        Metric("false_positive_rate", table="fpr", field="fpr", higher_is_better=False,
               key_fields=("threshold",), selectors=("threshold",), rows=_fpr_rows,
               description="pairs of distinct benign images that match (pairs share images, "
               "so the interval is optimistic)"),
        Metric("corpus_false_positive_rate", table="corpus", field="fpr",
               higher_is_better=False, key_fields=("threshold",), selectors=("threshold",),
               rows=_corpus_rows,
               description="pairs of the benign corpus (evaluation.corpus) that match: every "
               "pair, or the stated sample"),
    ])


_register_gate_metrics()
