"""The classification range's gate metrics: scorecard tables ``clean``, ``results`` and
``worst_case``, per-sample outcomes from ``samples.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from arange.gates import Metric, Outcomes, Row, register_metrics, same_value

from .scenario import GateRule

TASK = "classification"



def _clean_outcomes(row: Row, card: Mapping[str, Any], samples: Mapping[str, Any]) -> Outcomes:
    pred, labels = samples["clean_pred"][row["defense"]], samples["labels"]
    _same_length(pred, labels, f"clean_pred[{row['defense']!r}]")
    return [int(p) == int(y) for p, y in zip(pred, labels, strict=True)]


def _job_robust(samples: Mapping[str, Any], job_id: str) -> list[bool]:
    robust = samples["jobs"][job_id]["robust"]
    _same_length(robust, samples["labels"], f"jobs[{job_id!r}].robust")
    return [bool(v) for v in robust]


def _robust_outcomes(row: Row, card: Mapping[str, Any], samples: Mapping[str, Any]) -> Outcomes:
    return list(_job_robust(samples, row["job_id"]))


def _cell(card: Mapping[str, Any], row: Row) -> list[Row]:
    """The results rows of ``row``'s (defense, norm, eps) cell, in run order."""
    return [r for r in card["results"] if r["defense"] == row["defense"]
            and r["norm"] == row["norm"] and same_value(r["eps"], row["eps"])]


def _worst_outcomes(row: Row, card: Mapping[str, Any], samples: Mapping[str, Any]) -> Outcomes:
    rows = [r for r in _cell(card, row) if r["attack"] in row["attacks"]]
    if len(rows) != len(row["attacks"]):
        raise KeyError(f"results rows for attacks {row['attacks']}")
    vectors = [_job_robust(samples, r["job_id"]) for r in rows]
    return [all(v) for v in zip(*vectors, strict=True)]


def _success_outcomes(row: Row, card: Mapping[str, Any],
                      samples: Mapping[str, Any]) -> Outcomes:
    """Broken (True) or not (False) among the samples the attack ran on; None elsewhere.

    The runner records which samples each job attacked (``attacked``). Side files written
    before it did are reconstructed: the runner attacks the clean-correct samples, and in
    cascade mode only those that the earlier attacks of the same cell left unbroken (whose
    ``robust`` flags are cumulative)."""
    robust = _job_robust(samples, row["job_id"])
    stored = samples["jobs"][row["job_id"]].get("attacked")
    if stored is not None:
        _same_length(stored, robust, f"jobs[{row['job_id']!r}].attacked")
        attacked = [bool(v) for v in stored]
    else:
        attacked = [bool(v) for v in _clean_outcomes(row, card, samples)]
        if row.get("cumulative"):
            earlier = []
            for r in _cell(card, row):
                if r["job_id"] == row["job_id"]:
                    break
                earlier.append(r)
            if earlier:
                attacked = _job_robust(samples, earlier[-1]["job_id"])
    return [(not rb) if a else None for a, rb in zip(attacked, robust, strict=True)]


def _same_length(values: Sequence[Any], labels: Sequence[Any], what: str) -> None:
    if len(values) != len(labels):
        raise ValueError(f"{what} has {len(values)} entries for {len(labels)} samples")


_RESULT_KEY = ("defense", "attack", "norm", "eps")
_WORST_KEY = ("defense", "norm", "eps")
register_metrics(TASK, [
    Metric("robust_accuracy", "worst_case", "robust_accuracy", True, _WORST_KEY,
           ("defense", "eps"), route=(("attack", "worst_case"),), outcomes=_worst_outcomes,
           description="per-sample worst case over all attacks at a budget"),
    Metric("robust_accuracy", "worst_case", "robust_accuracy", True, _WORST_KEY,
           ("defense", "eps"), route=(("attack", None),), outcomes=_worst_outcomes,
           description="no attack named: the worst case over all attacks"),
    Metric("robust_accuracy", "results", "robust_accuracy", True, _RESULT_KEY,
           ("defense", "attack", "eps"), outcomes=_robust_outcomes,
           description="accuracy under one attack (clean-wrong samples count as broken)"),
    Metric("clean_accuracy", "clean", "accuracy", True, ("defense",), ("defense",),
           outcomes=_clean_outcomes, description="accuracy without attack"),
    Metric("attack_success_rate", "results", "attack_success_rate", False, _RESULT_KEY,
           ("defense", "attack", "eps"), count_field="n_attacked", outcomes=_success_outcomes,
           description="fraction of the attacked samples that the attack broke"),
], rule_model=GateRule)
