"""The metric catalogue: how a task's gate metrics are read from its scorecard tables,
registered by each task (:func:`register_metrics`)."""


from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ArangeError
from ..expr import format_eps
from ..stats import (
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    )

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .evidence import Evidence

ALPHA = 0.05
CORRECTIONS = ("holm", "none")
_TOL = 1e-9
# Rule keys that are not selectors.
_RULE_KEYS = ("name", "metric", "min", "max", "max_drop")

Row = Mapping[str, Any]
Outcomes = list[bool | None]  # per sample: True/False counted toward the rate; None not counted
# (row, scorecard JSON, samples side file) -> per-sample outcomes of that row's metric
OutcomeFn = Callable[[Row, Mapping[str, Any], Mapping[str, Any]], Outcomes]
# scorecard JSON -> the rows of a metric whose table is not a plain list of rows in the JSON
RowsFn = Callable[[Mapping[str, Any]], list[dict[str, Any]]]
# (current row, baseline row, current evidence, baseline evidence) -> (test name, one-sided
# p-value that the current value is worse): for metrics that are not per-sample rates (an AUC,
# say), where McNemar's and Newcombe's tests do not apply
RegressionTest = Callable[[Row, Row, "Evidence", "Evidence"], tuple[str, float]]
# (row, scorecard JSON, samples side file) -> named per-image arrays the metric is computed from
PerImageFn = Callable[[Row, Mapping[str, Any], Mapping[str, Any]], dict[str, list[Any]]]
# (per-image arrays, resampled image indices) -> the metric's value on that resample
StatisticFn = Callable[[Mapping[str, Any], Any], float]
BOOTSTRAP = "bootstrap over images ({kind}, one-sided, {b} resamples)"
BOOTSTRAP_RESAMPLES = 2000


class GateError(ArangeError):
    """A rule, scorecard or baseline cannot be evaluated (bad input: exit 2)."""


# ---------------------------------------------------------------------------- metric catalogue

@dataclass(frozen=True)
class Metric:
    """How a metric is read from a scorecard table.

    ``route`` holds rule values that pick this entry rather than select rows, for example
    ``(("attack", "worst_case"),)``; ``None`` as a value means "the rule does not give it". The
    first entry of a metric whose route matches the rule is used.

    ``where`` holds row values the metric always requires, for example ``(("goal",
    "evasion"),)`` where one table holds rows of two metrics. ``rows`` derives the rows from the
    scorecard when ``table`` is not a plain list of rows (nested curves, say); such rows keep no
    per-sample outcomes, so their regression tests are unpaired.
    """

    name: str
    table: str                       # scorecard JSON key holding a list of rows
    field: str                       # row field holding the rate
    higher_is_better: bool
    key_fields: tuple[str, ...]      # row fields that identify a row in the table
    selectors: tuple[str, ...]       # rule keys matched against row fields of the same name
    count_field: str = "n"           # row field holding the rate's denominator
    route: tuple[tuple[str, Any], ...] = ()
    outcomes: OutcomeFn | None = None
    description: str = ""
    rate: bool = True                # a proportion of count_field samples (Wilson CI applies)
    regression_test: RegressionTest | None = None  # required for max_drop when not a rate
    where: tuple[tuple[str, Any], ...] = ()
    rows: RowsFn | None = None
    per_image: PerImageFn | None = None   # non-rate metrics: the data a bootstrap resamples
    statistic: StatisticFn | None = None  # ... and the metric computed on a resample
    per_image_tolerance: float | None = 1e-4  # |statistic(all) - row value| allowed; None: unchecked

    @property
    def testable(self) -> bool:
        """A ``max_drop`` rule can be tested (a rate, a bootstrap or the metric's own test)."""
        return self.rate or self.regression_test is not None or (
            self.per_image is not None and self.statistic is not None)

    def routes(self, rule: Mapping[str, Any]) -> bool:
        return all(rule.get(k) == v for k, v in self.route)

    def holds(self, row: Row) -> bool:
        """The row is one of this metric's (its ``where`` values match)."""
        return all(same_value(row.get(k), v) for k, v in self.where)


METRICS: dict[str, dict[str, list[Metric]]] = {}
# task -> the pydantic model its rules are first validated with (field names and types)
RULE_MODELS: dict[str, Any] = {}


def register_metrics(task: str, metrics: Sequence[Metric], rule_model: Any = None) -> None:
    """Make ``metrics`` addressable by gate rules of scorecards whose ``task`` is ``task``;
    ``rule_model``: a pydantic model every rule of the task must fit first (optional)."""
    table = METRICS.setdefault(task, {})
    for m in metrics:
        table.setdefault(m.name, []).append(m)
    if rule_model is not None:
        RULE_MODELS[task] = rule_model


def task_metrics(task: str, source: str = "<scorecard>") -> dict[str, list[Metric]]:
    if task not in METRICS:
        from ..core.task import get_task
        try:
            get_task(task)  # importing the task's module registers its metrics
        except ArangeError as e:
            raise GateError(f"{source}: task {task!r} is not known to this arange: {e}") from e
    if task not in METRICS:
        raise GateError(f"{source}: gates are not available for task {task!r} (no metrics "
                        "registered; see arange.gates.register_metrics)")
    return METRICS[task]


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=_TOL, abs_tol=1e-12)
    return bool(a == b)




def row_label(metric: Metric, row: Row) -> str:
    parts = []
    for k in metric.key_fields:
        v = row.get(k)
        if k == "eps" and isinstance(v, (int, float)):
            parts.append(str(row.get("eps_label") or format_eps(float(v))))
        elif k == "threshold":
            parts.append(f"threshold {v}")
        elif k == "norm":
            continue  # shown with eps
        else:
            parts.append(str(v))
    if "norm" in metric.key_fields and parts:
        parts[-1] = f"{row.get('norm')} {parts[-1]}"
    return " / ".join(parts) or metric.table


