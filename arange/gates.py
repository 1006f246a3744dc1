"""Robustness gates: a scorecard, its scenario's ``gates:`` rules and an optional baseline in,
a CI verdict out (``arange gate``; exit 0 pass, 1 fail, 2 bad input).

A rule names a *metric* and *selectors* (for classification ``defense``, ``attack``, ``eps``) and
carries bounds:

* ``min`` / ``max``: absolute floor / ceiling on the measured value;
* ``max_drop``: the most the metric may get *worse* than in the baseline scorecard, as a
  fraction (``0.05`` = 5 percentage points). "Worse" follows the metric's direction: lower for
  accuracies, higher for attack success rates. A regression fails the gate only when the
  worsening exceeds ``max_drop`` *and* it is statistically significant (one-sided, ``alpha``
  0.05 by default, Holm-corrected over all regression checks of the gate), so re-running a
  healthy model with another seed does not fail CI by chance. When both runs scored the same
  samples (same dataset fingerprint) and both have per-sample outcomes, the test is McNemar's
  exact test on the paired outcomes; otherwise it is a one-sided test on the difference of two
  independent proportions, from the Newcombe (Wilson-score) interval. Every result says which
  test it used and its p-value.

A rule applies to every scorecard row it selects (a rule without ``eps`` covers every budget).
For classification, ``robust_accuracy`` with ``attack: worst_case`` - or with no ``attack`` - reads
the per-sample worst case over all attacks at that budget, which is never higher than any single
attack's number. A rule that selects no row is an error (exit 2), never a silent pass.

Other tasks plug in by registering their metrics (:func:`register_metrics`) from the module that
registers the task (:mod:`arange.core.task`): each :class:`Metric` names the scorecard table (a list of
row objects in the scorecard JSON), the row field holding the value, the direction, which row
fields identify a row and which of them a rule may select on, and optionally how to read the
per-sample outcomes from the run's ``samples`` side file (for paired tests). The task's scorecard
needs ``task``, ``name``, ``provenance.scenario.gates`` (the rules, echoed from the scenario),
``provenance.dataset`` and ``provenance.dataset_fingerprint``. For example (from
:mod:`arange.hashing.task`)::

    register_metrics("hash_matching", [
        Metric("evasion_rate", table="results", field="rate", higher_is_better=False,
               key_fields=("attack", "eps", "threshold"),
               selectors=("attack", "eps", "threshold"), where=(("goal", "evasion"),))])

A metric that is not a per-sample rate (a pixel AUC, a mean F1) sets ``rate=False`` and, for
``max_drop`` rules, gives ``per_image`` (the per-image data its value is computed from, read from
the run's side file and kept in baselines) and ``statistic`` (its value on a resample of the
images): the regression test is then a bootstrap over images, paired when both runs scored the
same images (:func:`bootstrap_regression`). A metric may instead bring its own
``regression_test``.

The scorecard's own evaluation-validity checks count too: a check with status ``fail`` fails the
gate (the numbers may overstate robustness) unless the caller allows it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ArangeError
from .expr import format_eps, parse_number
from .stats import (
    holm_adjust,
    mcnemar_exact_one_sided,
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    newcombe_one_sided,
    wilson_interval,
)
from .store import atomic_write_text

log = logging.getLogger(__name__)

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
        return all(_close(row.get(k), v) for k, v in self.where)


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
        from .core.task import get_task
        try:
            get_task(task)  # importing the task's module registers its metrics
        except ArangeError as e:
            raise GateError(f"{source}: task {task!r} is not known to this arange: {e}") from e
    if task not in METRICS:
        raise GateError(f"{source}: gates are not available for task {task!r} (no metrics "
                        "registered; see arange.gates.register_metrics)")
    return METRICS[task]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=_TOL, abs_tol=1e-12)
    return bool(a == b)


# ---------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    index: int
    metric: str
    selectors: dict[str, Any]
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        sel = ", ".join(f"{k}={_fmt_value(k, v)}" for k, v in self.selectors.items())
        return f"gates[{self.index}] {self.metric}" + (f" ({sel})" if sel else "")


def _fmt_value(key: str, value: Any) -> str:
    if key == "eps" and isinstance(value, (int, float)):
        return format_eps(float(value))
    return str(value)


def parse_rules(card: Mapping[str, Any], source: str = "<scorecard>") -> list[Rule]:
    """The gate rules echoed in a scorecard's provenance, checked against the task's metrics."""
    prov = card.get("provenance")
    scenario = prov.get("scenario") if isinstance(prov, Mapping) else None
    if not isinstance(scenario, Mapping):
        raise GateError(f"{source}: provenance.scenario is missing; cannot read the gates")
    raw = scenario.get("gates", [])
    return rules_from_list(raw, str(card.get("task", "classification")),
                           f"{source}: provenance.scenario.gates")


def rules_from_list(raw: Any, task: str, where: str) -> list[Rule]:
    """Validate a list of rule mappings (``where`` prefixes error paths)."""
    if not isinstance(raw, list):
        raise GateError(f"{where}: must be a list of rules (got {type(raw).__name__})")
    metrics = task_metrics(task, where)
    rules = []
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise GateError(f"{path}: a rule must be a mapping with metric and bounds "
                            f"(got {type(item).__name__})")
        if task in RULE_MODELS:
            item = _model_rule(RULE_MODELS[task], item, path)
        rules.append(_rule(i, item, metrics, path))
    return rules


def _model_rule(model: Any, item: Mapping[str, Any], path: str) -> dict[str, Any]:
    from pydantic import ValidationError

    try:
        return dict(model.model_validate(dict(item)).model_dump())
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            from .registry import suggest
            allowed = list(model.model_fields)
            msg = f"unknown field {loc!r}{suggest(loc, allowed)} (allowed: {', '.join(allowed)})"
        raise GateError(f"{path}{'.' + loc if loc else ''}: {msg}") from e


def _key(key: Any) -> str:
    """A rule key for an error path: quoted, escaped and cut unless a plain name."""
    from .core.safeio import short

    text = str(key)
    return text if text.isidentifier() and len(text) <= 64 else f"[{short(text, 40)}]"


def _bound(item: Mapping[str, Any], key: str, path: str) -> float | None:
    v = item.get(key)
    if v is None:
        return None
    try:
        x = parse_number(v)
    except ValueError as e:
        raise GateError(f"{path}.{key}: {e}") from e
    if not 0 <= x <= 1:
        raise GateError(f"{path}.{key}: rates are in [0, 1] (got {x:g})")
    return x


def _rule(index: int, item: Mapping[str, Any], metrics: dict[str, list[Metric]],
          path: str) -> Rule:
    from .registry import suggest
    metric = item.get("metric")
    if not isinstance(metric, str):
        raise GateError(f"{path}.metric: missing; name one of {', '.join(metrics)}")
    if metric not in metrics:
        raise GateError(f"{path}.metric: unknown metric {metric!r}"
                        f"{suggest(metric, list(metrics))} (available: {', '.join(metrics)})")
    lo, hi, drop = (_bound(item, k, path) for k in ("min", "max", "max_drop"))
    if lo is None and hi is None and drop is None:
        raise GateError(f"{path}: needs at least one of min, max or max_drop")
    if lo is not None and hi is not None and lo > hi:
        raise GateError(f"{path}: min {lo:g} is above max {hi:g}; no value can pass")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise GateError(f"{path}.name: must be text (got {name!r})")
    selectors = {k: v for k, v in item.items() if k not in _RULE_KEYS and v is not None}
    rule = Rule(index, metric, selectors, lo, hi, drop, name)
    m = resolve_metric(rule, metrics[metric], path)
    if drop is not None and not m.testable:
        raise GateError(f"{path}.max_drop: {metric} is not a rate and has no regression test; "
                        "use min or max")
    routed = {k for k, _ in m.route}
    for key in selectors:
        if key not in routed and key not in m.selectors:
            allowed = sorted(set(m.selectors) | routed)
            raise GateError(f"{path}.{_key(key)}: {metric} ({m.table}) cannot be selected by "
                            f"{key!r}{suggest(key, allowed)} (selectors: "
                            f"{', '.join(allowed) or 'none'}); remove it")
    return rule


def resolve_metric(rule: Rule, candidates: Sequence[Metric], path: str = "<rule>") -> Metric:
    for m in candidates:
        if m.routes(rule.selectors):
            return m
    raise GateError(f"{path}: no table holds {rule.metric} for "
                    f"{', '.join(f'{k}={v}' for k, v in rule.selectors.items())}")


# ---------------------------------------------------------------------------- evidence

@dataclass
class Evidence:
    """A scorecard (as JSON) plus a way to get per-sample outcomes of its rows."""

    source: str
    card: dict[str, Any]
    samples_path: Path | None = None
    stored: dict[str, Any] | None = None      # outcomes saved in a baseline file
    kind: Literal["scorecard", "baseline"] = "scorecard"
    stored_per_image: dict[str, Any] | None = None  # per-image data saved in a baseline file
    _samples: Any = None
    _cache: dict[tuple[str, str, int], Outcomes | None] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.card.get("task", "classification"))

    @property
    def name(self) -> str:
        return str(self.card.get("name"))

    def prov(self, key: str) -> Any:
        prov = self.card.get("provenance")
        return prov.get(key) if isinstance(prov, Mapping) else None

    def table(self, name: str) -> list[dict[str, Any]]:
        rows = self.card.get(name)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise GateError(f"{self.source}: has no table {name!r} (a list of rows)")
        return rows

    def rows(self, metric: Metric) -> list[dict[str, Any]]:
        """The rows ``metric`` reads (its table, or the rows it derives from the scorecard);
        those of other metrics sharing the table are included (see :meth:`Metric.holds`)."""
        if metric.rows is None:
            return self.table(metric.table)
        try:
            return metric.rows(self.card)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise GateError(f"{self.source}: cannot read the {metric.table} rows of "
                            f"{metric.name} ({e!r}); the scorecard is malformed") from e

    def outcomes(self, metric: Metric, index: int) -> Outcomes | None:
        """Per-sample outcomes of ``metric`` on row ``index`` of its table, checked against the
        row's own value; None where the run kept no per-sample outcomes."""
        key = (metric.name, metric.table, index)
        if key not in self._cache:
            self._cache[key] = self._outcomes(metric, index)
        return self._cache[key]

    def per_image(self, metric: Metric, index: int) -> dict[str, Any] | None:
        """The per-image data of ``metric`` on row ``index`` (for its bootstrap test), checked
        against the row's own value; None where the run or baseline kept none."""
        if metric.per_image is None or metric.statistic is None:
            return None
        row = self.table(metric.table)[index]
        label = row_label(metric, row)
        if self.kind == "baseline":
            try:
                data = (self.stored_per_image or {})[metric.table][index][metric.name]
            except (KeyError, IndexError, TypeError):
                return None
            where = f"{self.source}: per_image.{metric.table}[{index}].{metric.name}"
        else:
            samples = self._load_samples()
            if samples is None:
                return None
            where = str(self.samples_path)
            try:
                data = metric.per_image(row, self.card, samples)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise GateError(f"{where}: per-image data for {metric.name} ({label}) are "
                                f"missing or malformed ({e}); re-run the scenario") from e
        import numpy as np

        try:
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in dict(data).items()}
            n = {len(a) for a in arrays.values()}
            value = metric.statistic(arrays, np.arange(n.pop())) if len(n) == 1 else None
        except (TypeError, ValueError) as e:
            raise GateError(f"{where}: per-image data for {metric.name} ({label}) are not "
                            f"numeric arrays of one length ({e})") from e
        expected = row.get(metric.field)
        if value is None or not isinstance(expected, (int, float)) or not math.isfinite(value) \
                or (metric.per_image_tolerance is not None
                    and abs(value - expected) > metric.per_image_tolerance):
            raise GateError(f"{where}: per-image data of {metric.name} ({label}) give {value} "
                            f"but the scorecard row says {expected}; they do not belong to "
                            "this scorecard")
        return arrays

    def _outcomes(self, metric: Metric, index: int) -> Outcomes | None:
        if not metric.rate or metric.rows is not None:
            return None  # per-sample outcomes describe rates; other metrics bring their own test
        row = self.table(metric.table)[index]
        label = row_label(metric, row)
        if self.stored is not None:
            try:
                text = self.stored[metric.table][index][metric.name]
            except (KeyError, IndexError, TypeError):
                return None
            vec = decode_outcomes(text, f"{self.source}: outcomes.{metric.table}[{index}]."
                                  f"{metric.name}")
        else:
            samples = self._load_samples()
            if samples is None or metric.outcomes is None:
                return None
            try:
                vec = metric.outcomes(row, self.card, samples)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise GateError(f"{self.samples_path}: per-sample outcomes for {metric.name} "
                                f"({label}) are missing or malformed ({e}); the side file does "
                                "not belong to this scorecard - re-run the scenario") from e
        where = self.source if self.stored is not None else str(self.samples_path)
        _verify(vec, row, metric, label, where)
        return vec

    def _load_samples(self) -> Any:
        if self._samples is None:
            if self.samples_path is None or not self.samples_path.is_file():
                self._samples = False
                log.info("%s: no per-sample outcomes (%s); regression tests will be unpaired",
                         self.source, self.samples_path)
            else:
                self._samples = read_json(self.samples_path, "samples file")
                if not isinstance(self._samples, dict):
                    raise GateError(f"{self.samples_path}: not a samples file (expected a "
                                    "mapping)")
        return self._samples or None


def _verify(vec: Outcomes, row: Row, metric: Metric, label: str, source: str) -> None:
    counted = [v for v in vec if v is not None]
    n, k = len(counted), sum(1 for v in counted if v)
    value, expected_n = row.get(metric.field), row.get(metric.count_field)
    rate = k / n if n else 0.0
    if expected_n != n or not isinstance(value, (int, float)) or abs(rate - value) > 1e-9:
        raise GateError(f"{source}: per-sample outcomes of {metric.name} ({label}) give "
                        f"{k}/{n} = {rate:.4f} but the scorecard row says {value} over "
                        f"{expected_n} samples; the outcomes do not belong to this scorecard")


def encode_outcomes(vec: Outcomes) -> str:
    """One character per sample: ``1`` true, ``0`` false, ``-`` not counted."""
    return "".join("-" if v is None else ("1" if v else "0") for v in vec)


def decode_outcomes(text: Any, where: str) -> Outcomes:
    if not isinstance(text, str) or set(text) - set("10-"):
        raise GateError(f"{where}: must be a string of 1, 0 and - (one per sample)")
    return [None if c == "-" else c == "1" for c in text]


def read_json(path: Path, what: str) -> Any:
    """A JSON file arange wrote, read with the bounds of :mod:`arange.core.safeio`."""
    from .core.safeio import load_json

    if path.is_dir():
        raise GateError(f"{path}: is a folder without scorecard.json")
    if not path.exists() and not path.is_symlink():
        raise GateError(f"{path}: no such {what}")
    return load_json(path, what, error=GateError)


def scorecard_path(path: str | Path) -> Path:
    """Accept a scorecard file or a run folder holding ``scorecard.json``."""
    p = Path(path)
    return p / "scorecard.json" if p.is_dir() else p


def check_card(raw: Any, source: str) -> dict[str, Any]:
    """Validate a scorecard's JSON (fully for classification) and return it as a dict."""
    from .scorecard import SCHEMA_VERSION, Scorecard
    if not isinstance(raw, dict) or "schema_version" not in raw or "task" not in raw:
        raise GateError(f"{source}: not an arange scorecard (no schema_version/task)")
    if raw.get("task", "classification") == "classification":
        from pydantic import ValidationError
        if raw["schema_version"] != SCHEMA_VERSION:
            raise GateError(f"{source}: scorecard schema_version {raw['schema_version']} is "
                            f"not supported (this arange reads version {SCHEMA_VERSION}); "
                            "re-run the scenario or use a matching arange version")
        try:
            return Scorecard.model_validate(raw).model_dump(mode="json")
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise GateError(f"{source}: invalid scorecard: {loc}: {first['msg']}") from e
    prov = raw.get("provenance")
    if not isinstance(prov, dict) or not isinstance(prov.get("scenario"), dict):
        raise GateError(f"{source}: invalid scorecard: provenance.scenario is missing")
    return raw


def load_scorecard_evidence(path: str | Path) -> Evidence:
    p = scorecard_path(path)
    card = check_card(read_json(p, "scorecard"), str(p))
    files = card.get("files") or {}
    samples = files.get("samples") if isinstance(files, dict) else None
    samples_path = p.parent / samples if isinstance(samples, str) and samples else None
    return Evidence(str(p), card, samples_path)


BASELINE_FORMAT = 1  # of the files 'arange baseline save' writes


def evidence_from_baseline(raw: dict[str, Any], source: str) -> Evidence:
    """Check a parsed baseline document and wrap it for the gate."""
    if raw.get("arange_baseline") != BASELINE_FORMAT:
        raise GateError(f"{source}: baseline format {raw.get('arange_baseline')!r} is not "
                        f"supported (this arange reads {BASELINE_FORMAT}); save it again with "
                        "'arange baseline save'")
    card = check_card(raw.get("scorecard"), f"{source}: scorecard")
    outcomes = raw.get("outcomes", {})
    if not isinstance(outcomes, dict):
        raise GateError(f"{source}: outcomes: must be a mapping of table -> rows")
    for table, rows in outcomes.items():
        card_rows = card.get(table)
        if not isinstance(rows, list) or not isinstance(card_rows, list) \
                or len(rows) != len(card_rows):
            raise GateError(f"{source}: outcomes.{table}: must list one entry per row of the "
                            f"scorecard's {table!r} table")
        for i, entry in enumerate(rows):
            if not isinstance(entry, dict):
                raise GateError(f"{source}: outcomes.{table}[{i}]: must be a mapping of "
                                "metric -> outcome string")
            for metric, text in entry.items():
                decode_outcomes(text, f"{source}: outcomes.{table}[{i}].{metric}")
    per_image = raw.get("per_image", {})
    if not isinstance(per_image, dict):
        raise GateError(f"{source}: per_image: must be a mapping of table -> rows")
    return Evidence(source, card, None, stored=outcomes, kind="baseline",
                    stored_per_image=per_image)


def load_reference(path: str | Path) -> Evidence:
    """A baseline: a file written by ``arange baseline save``, a scorecard or a run folder."""
    p = scorecard_path(path)
    raw = read_json(p, "baseline")
    if isinstance(raw, dict) and "arange_baseline" in raw:
        return evidence_from_baseline(raw, str(p))
    if isinstance(raw, dict) and "schema_version" in raw:
        return load_scorecard_evidence(p)
    raise GateError(f"{p}: not a baseline (write one with 'arange baseline save SCORECARD') "
                    "nor a scorecard")


# ---------------------------------------------------------------------------- statistics

# ---------------------------------------------------------------------------- evaluation

CheckKind = Literal["min", "max", "max_drop"]
MCNEMAR = "McNemar exact (paired, one-sided)"
NEWCOMBE = "Newcombe score interval (unpaired, one-sided)"


@dataclass
class CheckResult:
    """One bound of one rule on one scorecard row."""

    kind: CheckKind
    row: str
    value: float
    n: int
    threshold: float
    passed: bool = True
    ci: tuple[float, float] | None = None
    baseline: float | None = None
    baseline_n: int | None = None
    worse_by: float | None = None     # how much worse than the baseline (negative: better)
    test: str | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    lost: int | None = None           # paired: samples good in the baseline, bad now
    gained: int | None = None
    worsening: str = "drop"           # what getting worse means: a drop, or a rise (of a rate
    #                                   where lower is better)
    note: str = ""
    message: str = ""


@dataclass
class RuleResult:
    rule: Rule
    metric: Metric
    checks: list[CheckResult]

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class GateReport:
    scenario: str
    task: str
    scorecard: str
    baseline: str | None
    alpha: float
    correction: str
    rules: list[RuleResult]
    seconds: float = 0.0
    timestamp: str = ""
    notes: list[str] = field(default_factory=list)
    # evaluation-validity checks of the scorecard that failed ("name: message"); a failed check
    # means the numbers may overstate robustness, so the gate fails unless told to allow it
    invalid: list[str] = field(default_factory=list)
    allow_invalid: bool = False

    @property
    def validity_passed(self) -> bool:
        return self.allow_invalid or not self.invalid

    @property
    def passed(self) -> bool:
        return self.validity_passed and all(r.passed for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def regression_checks(self) -> int:
        return sum(1 for r in self.rules for c in r.checks if c.kind == "max_drop")

    def to_text(self) -> str:
        return render_text(self)

    def to_junit(self) -> str:
        return render_junit(self)

    def to_markdown(self) -> str:
        return render_markdown(self)


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


def _matches(metric: Metric, rule: Rule, row: Row) -> bool:
    routed = {k for k, _ in metric.route}
    return all(_close(row.get(k), v) for k, v in rule.selectors.items() if k not in routed)


def _same_row(metric: Metric, a: Row, b: Row) -> bool:
    return all(_close(a.get(k), b.get(k)) for k in metric.key_fields)


def check_compatible(current: Evidence, baseline: Evidence) -> list[str]:
    """Refuse baselines of another task, scenario or dataset; return notes on what differs."""
    for what, a, b in (("task", current.task, baseline.task),
                       ("scenario", current.name, baseline.name),
                       ("dataset", current.prov("dataset"), baseline.prov("dataset"))):
        if a != b:
            raise GateError(f"{baseline.source}: the baseline is for {what} {b!r} but "
                            f"{current.source} is for {what} {a!r}; compare runs of the same "
                            "scenario, or record a new baseline with 'arange baseline save'")
    notes = []
    if current.prov("dataset_fingerprint") != baseline.prov("dataset_fingerprint"):
        notes.append("the baseline scored other samples (dataset fingerprint differs): "
                     "regression tests are unpaired")
    if current.prov("weights_sha256") is not None \
            and current.prov("weights_sha256") == baseline.prov("weights_sha256"):
        notes.append("same model weights as the baseline")
    return notes


def failed_checks(card: Mapping[str, Any]) -> list[str]:
    """The scorecard's evaluation-validity checks with status ``fail``."""
    checks = card.get("checks")
    if not isinstance(checks, list):
        return []
    return [f"{c.get('name')}: {c.get('message')}" for c in checks
            if isinstance(c, Mapping) and c.get("status") == "fail"]


def evaluate(current: Evidence, rules: Sequence[Rule], baseline: Evidence | None = None,
             alpha: float = ALPHA, correction: str = "holm",
             allow_failed_checks: bool = False) -> GateReport:
    """Evaluate ``rules`` on ``current`` (and against ``baseline`` for ``max_drop`` rules).

    The scorecard's own evaluation-validity checks count too: one that failed fails the gate
    (its numbers may overstate robustness) unless ``allow_failed_checks``."""
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise GateError(f"alpha must be between 0 and 1 (got {alpha:g})")
    if correction not in CORRECTIONS:
        raise GateError(f"correction must be one of {', '.join(CORRECTIONS)} "
                        f"(got {correction!r})")
    if not rules:
        raise GateError(f"{current.source}: the scenario has no gates: rules; add a gates: list "
                        "to the scenario (see docs/ci.md)")
    needs_baseline = [r for r in rules if r.max_drop is not None]
    if needs_baseline and baseline is None:
        raise GateError(f"rule {needs_baseline[0].name!r} has max_drop, which needs a baseline: "
                        "pass --baseline FILE (record one with 'arange baseline save "
                        "SCORECARD')")
    notes = check_compatible(current, baseline) if baseline is not None else []
    metrics = task_metrics(current.task, current.source)
    results: list[RuleResult] = []
    for rule in rules:
        metric = resolve_metric(rule, metrics[rule.metric], f"gates[{rule.index}]")
        rows = [(i, r) for i, r in enumerate(current.rows(metric))
                if metric.holds(r) and _matches(metric, rule, r)]
        if not rows:
            sel = ", ".join(f"{k}={_fmt_value(k, v)}" for k, v in rule.selectors.items())
            raise GateError(f"{current.source}: rule {rule.name!r}: the scorecard has no "
                            f"{metric.table} row for {rule.metric}"
                            f"{' with ' + sel if sel else ''}; fix the rule or re-run the "
                            "scenario so the row exists")
        checks: list[CheckResult] = []
        for i, row in rows:
            checks += _row_checks(rule, metric, current, i, row, baseline)
        results.append(RuleResult(rule, metric, checks))
    _decide_regressions(results, alpha, correction)
    return GateReport(scenario=current.name, task=current.task, scorecard=current.source,
                      baseline=baseline.source if baseline is not None else None, alpha=alpha,
                      correction=correction, rules=results,
                      seconds=time.perf_counter() - t0,
                      timestamp=dt.datetime.now(dt.UTC).replace(microsecond=0)
                      .isoformat(), notes=notes, invalid=failed_checks(current.card),
                      allow_invalid=allow_failed_checks)


def _rate(row: Row, metric: Metric, source: str, label: str) -> tuple[float, int]:
    value, n = row.get(metric.field), row.get(metric.count_field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not isinstance(n, int) or isinstance(n, bool):
        raise GateError(f"{source}: {metric.table} row {label} has no numeric "
                        f"{metric.field}/{metric.count_field}")
    # validated before any statistics: a scorecard is input, possibly edited or hostile
    if not math.isfinite(value) or (metric.rate and not 0 <= value <= 1) \
            or (not metric.rate and not -1e9 <= value <= 1e9):
        expected = "a rate in [0, 1]" if metric.rate else "a finite number"
        raise GateError(f"{source}: {metric.table} row {label}: {metric.field} is {value!r}, "
                        f"which no run writes ({expected} expected); the scorecard is damaged "
                        "or edited - run the scenario again")
    if n < 0 or n > 10**12:
        raise GateError(f"{source}: {metric.table} row {label}: {metric.count_field} is {n}, "
                        "which no run writes; the scorecard is damaged or edited")
    return float(value), n


def _row_checks(rule: Rule, metric: Metric, current: Evidence, index: int, row: Row,
                baseline: Evidence | None) -> list[CheckResult]:
    label = row_label(metric, row)
    value, n = _rate(row, metric, current.source, label)
    ci = wilson_interval(round(value * n), n) if metric.rate else None
    out = []
    bounds: tuple[tuple[CheckKind, float | None], ...] = (("min", rule.min), ("max", rule.max))
    for kind, bound in bounds:
        if bound is None:
            continue
        ok = value >= bound - _TOL if kind == "min" else value <= bound + _TOL
        op = (">=" if ok else "<") if kind == "min" else ("<=" if ok else ">")
        extra = f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci is not None else ""
        out.append(CheckResult(kind, label, value, n, bound, ok, ci, message=(
            f"{value:.4f} {op} {kind} {bound:g} (n={n}{extra})")))
    if rule.max_drop is not None and baseline is not None:
        out.append(_regression(rule.max_drop, metric, current, index, row, label, value, n, ci,
                               baseline))
    return out


def _regression(max_drop: float, metric: Metric, current: Evidence, index: int, row: Row,
                label: str, value: float, n: int, ci: tuple[float, float] | None,
                baseline: Evidence) -> CheckResult:
    matches = [(j, r) for j, r in enumerate(baseline.rows(metric))
               if metric.holds(r) and _same_row(metric, row, r)]
    if not matches:
        raise GateError(f"{baseline.source}: the baseline has no {metric.table} row for "
                        f"{label} ({metric.name}); record a new baseline with 'arange "
                        "baseline save' once this row is accepted")
    j, brow = matches[0]
    bvalue, bn = _rate(brow, metric, baseline.source, label)
    worse_by = (bvalue - value) if metric.higher_is_better else (value - bvalue)
    check = CheckResult("max_drop", label, value, n, max_drop, True, ci, baseline=bvalue,
                        baseline_n=bn, worse_by=worse_by,
                        worsening="drop" if metric.higher_is_better else "rise")
    notes = []
    if "params" in row and "params" in brow and row["params"] != brow["params"]:
        notes.append("attack parameters differ from the baseline's")
    if metric.regression_test is not None:
        check.test, check.p_value = metric.regression_test(row, brow, current, baseline)
        check.note = "; ".join(notes)
        return check
    if not metric.rate:
        check.test, check.p_value, note = bootstrap_regression(metric, current, index,
                                                               baseline, j, label)
        check.note = "; ".join([*notes, note] if note else notes)
        return check
    cur_vec = current.outcomes(metric, index)
    base_vec = baseline.outcomes(metric, j)
    paired = (cur_vec is not None and base_vec is not None
              and len(cur_vec) == len(base_vec)
              and current.prov("dataset_fingerprint") == baseline.prov("dataset_fingerprint"))
    if paired and cur_vec is not None and base_vec is not None:
        lost = gained = 0
        for b, c in zip(base_vec, cur_vec, strict=True):
            if b is None or c is None or b == c:
                continue
            b_good = b if metric.higher_is_better else not b
            if b_good:
                lost += 1
            else:
                gained += 1
        check.test, check.lost, check.gained = MCNEMAR, lost, gained
        check.p_value = mcnemar_exact_one_sided(lost, gained)
    else:
        why = ("other samples" if cur_vec is not None and base_vec is not None else
               f"no per-sample outcomes in the {'baseline' if base_vec is None else 'scorecard'}")
        notes.append(f"unpaired: {why}")
        k_now, k_base = round(value * n), round(bvalue * bn)
        check.test = NEWCOMBE
        if metric.higher_is_better:
            check.p_value = newcombe_one_sided(k_base, bn, k_now, n)
        else:
            check.p_value = newcombe_one_sided(k_now, n, k_base, bn)
    check.note = "; ".join(notes)
    return check


def bootstrap_regression(metric: Metric, current: Evidence, index: int, baseline: Evidence,
                         bindex: int, label: str) -> tuple[str, float, str]:
    """One-sided bootstrap p-value that ``metric`` got worse from the baseline's row ``bindex``
    to the current row ``index``: the share of image resamples in which it did not get worse
    (the images are resampled jointly when both runs scored the same images)."""
    import numpy as np

    if metric.statistic is None:
        raise GateError(f"internal: {metric.name} has no statistic")
    cur = current.per_image(metric, index)
    base = baseline.per_image(metric, bindex)
    if cur is None or base is None:
        missing = baseline.source if base is None else current.source
        raise GateError(f"{missing}: no per-image data for {metric.name} ({label}), which its "
                        "max_drop test needs; re-run the scenario, and save the baseline again "
                        "with 'arange baseline save'")
    n_cur, n_base = len(next(iter(cur.values()))), len(next(iter(base.values())))
    paired = n_cur == n_base and current.prov("dataset_fingerprint") == \
        baseline.prov("dataset_fingerprint")
    rng = np.random.default_rng(0)
    not_worse = 0
    for _ in range(BOOTSTRAP_RESAMPLES):
        ic = rng.integers(0, n_cur, n_cur)
        ib = ic if paired else rng.integers(0, n_base, n_base)
        delta = metric.statistic(cur, ic) - metric.statistic(base, ib)
        if (delta if metric.higher_is_better else -delta) >= 0:
            not_worse += 1
    p = (1 + not_worse) / (BOOTSTRAP_RESAMPLES + 1)
    kind = "paired" if paired else "unpaired"
    note = "" if paired else "unpaired: other images"
    return BOOTSTRAP.format(kind=kind, b=BOOTSTRAP_RESAMPLES), p, note


def _decide_regressions(results: list[RuleResult], alpha: float, correction: str) -> None:
    checks = [c for r in results for c in r.checks if c.kind == "max_drop"]
    raw = [c.p_value if c.p_value is not None else 1.0 for c in checks]
    adjusted = holm_adjust(raw) if correction == "holm" else list(raw)
    for c, p_adj in zip(checks, adjusted, strict=True):
        c.p_adjusted = p_adj
        if c.worse_by is None or c.baseline is None:
            raise GateError(f"internal: regression check on {c.row} has no baseline value")
        too_much = c.worse_by > c.threshold + _TOL
        significant = p_adj <= alpha
        c.passed = not (too_much and significant)
        pts = 100 * c.worse_by
        change = (f"{abs(pts):.1f} points worse than" if pts > 0 else
                  f"{abs(pts):.1f} points better than" if pts < 0 else "equal to")
        stat = f"{c.test} p={_fmt_p(c.p_value)}"
        if correction == "holm" and len(checks) > 1:
            stat += f", Holm-adjusted {_fmt_p(p_adj)} over {len(checks)} checks"
        if c.lost is not None:
            stat += f"; {c.lost} samples lost, {c.gained} gained"
        head = f"{c.value:.4f} is {change} the baseline {c.baseline:.4f}"
        limit = f"max {c.worsening} {100 * c.threshold:.1f} points"
        if not too_much:
            verdict = f"within {limit}"
        elif significant:
            verdict = f"exceeds {limit} and is significant at alpha {alpha:g}"
        else:
            verdict = (f"exceeds {limit} but is not significant at alpha {alpha:g} "
                       "(consistent with evaluation noise)")
        c.message = f"{head}: {verdict} ({stat})" + (f" [{c.note}]" if c.note else "")


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def gate(scorecard: str | Path, baseline: str | Path | None = None, alpha: float = ALPHA,
         correction: str = "holm", allow_failed_checks: bool = False) -> GateReport:
    """Evaluate the gates echoed in ``scorecard`` (a file or run folder)."""
    current = load_scorecard_evidence(scorecard)
    rules = parse_rules(current.card, current.source)
    ref = load_reference(baseline) if baseline is not None else None
    return evaluate(current, rules, ref, alpha=alpha, correction=correction,
                    allow_failed_checks=allow_failed_checks)


# ---------------------------------------------------------------------------- rendering

def _check_line(rule: RuleResult, c: CheckResult) -> str:
    status = "pass" if c.passed else "FAIL"
    return f"  [{status}] {rule.name}: {rule.metric.name} [{c.row}] {c.message}"


def render_text(report: GateReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [f"gate {report.scenario}: {verdict} ({len(report.rules) - len(report.failed)} of "
             f"{len(report.rules)} rules passed"
             + ("" if report.validity_passed else "; evaluation-validity checks failed")
             + f"; alpha {report.alpha:g}"
             + (f", {report.correction} correction" if report.regression_checks > 1 else "")
             + ")"]
    lines.append(f"  scorecard: {report.scorecard}")
    if report.baseline:
        lines.append(f"  baseline:  {report.baseline}")
    lines += [f"  note: {n}" for n in report.notes]
    lines.append(f"  [{'pass' if report.validity_passed else 'FAIL'}] {VALIDITY}: "
                 + _validity_text(report))
    for r in report.rules:
        lines += [_check_line(r, c) for c in r.checks]
    return "\n".join(lines)


VALIDITY = "evaluation-validity"


def _validity_text(report: GateReport) -> str:
    if not report.invalid:
        return "no evaluation-validity check of the scorecard failed"
    text = f"{len(report.invalid)} evaluation-validity check(s) failed: " \
        + "; ".join(report.invalid)
    if report.allow_invalid:
        return text + " (allowed by --allow-failed-checks)"
    return text + " (the numbers may overstate robustness; fix the evaluation, or pass " \
        "--allow-failed-checks)"


def render_junit(report: GateReport) -> str:
    """JUnit XML: one test case per rule, plus one for the scorecard's evaluation-validity
    checks; a failed case carries a <failure> with its details."""
    tests = len(report.rules) + 1
    failures = len(report.failed) + (0 if report.validity_passed else 1)
    secs = f"{report.seconds:.3f}"
    root = ET.Element("testsuites", name="arange gate", tests=str(tests),
                      failures=str(failures), errors="0", time=secs)
    suite = ET.SubElement(root, "testsuite", name=f"arange gate: {report.scenario}",
                          tests=str(tests), failures=str(failures), errors="0", skipped="0",
                          time=secs, timestamp=report.timestamp)
    props = ET.SubElement(suite, "properties")
    for k, v in (("scorecard", report.scorecard), ("baseline", report.baseline or ""),
                 ("task", report.task), ("alpha", f"{report.alpha:g}"),
                 ("correction", report.correction)):
        ET.SubElement(props, "property", name=k, value=v)
    classname = f"arange.gate.{report.scenario}"
    case = ET.SubElement(suite, "testcase", classname=classname, name=VALIDITY, time="0.000")
    text = _validity_text(report)
    if report.validity_passed:
        ET.SubElement(case, "system-out").text = text
    else:
        ET.SubElement(case, "failure", type="arange.gate.validity", message=text).text = \
            "\n".join(report.invalid)
    for r in report.rules:
        case = ET.SubElement(suite, "testcase", classname=classname, name=r.name, time="0.000")
        details = "\n".join(f"[{'pass' if c.passed else 'FAIL'}] {r.metric.name} [{c.row}] "
                            f"{c.message}" for c in r.checks)
        if not r.passed:
            bad = [c for c in r.checks if not c.passed]
            kind = "regression" if any(c.kind == "max_drop" for c in bad) else "threshold"
            message = f"{r.metric.name} [{bad[0].row}] {bad[0].message}"
            if len(bad) > 1:
                message += f" (and {len(bad) - 1} more)"
            fail = ET.SubElement(case, "failure", type=f"arange.gate.{kind}", message=message)
            fail.text = details
        else:
            ET.SubElement(case, "system-out").text = details
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"


def _md(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _bound_text(c: CheckResult) -> str:
    if c.kind == "min":
        return f">= {c.threshold:g}"
    if c.kind == "max":
        return f"<= {c.threshold:g}"
    return f"{c.worsening} <= {100 * c.threshold:.1f} pts"


def render_markdown(report: GateReport) -> str:
    """A pull-request comment: verdict, one table row per check, then what regressed."""
    icon = "✅" if report.passed else "❌"
    verdict = "passed" if report.passed else "failed"
    lines = [f"### {icon} arange gate {verdict}: `{_md(report.scenario)}`", ""]
    summary = (f"{len(report.rules) - len(report.failed)} of {len(report.rules)} rules passed; "
               f"scorecard `{_md(report.scorecard)}`")
    if report.baseline:
        summary += f"; baseline `{_md(report.baseline)}`"
    summary += f"; alpha {report.alpha:g}"
    if report.regression_checks > 1 and report.correction == "holm":
        summary += f" (Holm over {report.regression_checks} regression checks)"
    lines += [summary + ".", ""]
    if report.invalid:
        mark = "⚠️" if report.allow_invalid else "❌"
        lines += [f"{mark} {_md(_validity_text(report))}", ""]
    lines += ["| Status | Rule | Metric | Row | Value | Bound | Baseline | Change | Test | p |",
              "|---|---|---|---|---:|---|---:|---:|---|---:|"]
    for r in report.rules:
        for c in r.checks:
            status = "✅ pass" if c.passed else "❌ fail"
            base = f"{c.baseline:.3f}" if c.baseline is not None else ""
            change = ""
            if c.baseline is not None:
                change = f"{100 * (c.value - c.baseline):+.1f} pts"
            test = c.test.split(" (")[0] if c.test else ""
            p = _fmt_p(c.p_adjusted if c.p_adjusted is not None else c.p_value) \
                if c.p_value is not None else ""
            lines.append("| " + " | ".join(_md(x) for x in (
                status, r.name, r.metric.name, c.row, f"{c.value:.3f}", _bound_text(c), base,
                change, test, p)) + " |")
    regressed = [(r, c) for r in report.rules for c in r.checks if not c.passed]
    if regressed:
        lines += ["", "#### What failed", ""]
        for r, c in regressed:
            lines.append(f"- **{_md(r.name)}**: {_md(r.metric.name)} [{_md(c.row)}] "
                         f"{_md(c.message)}")
    if report.notes:
        lines += [""] + [f"_Note: {_md(n)}._" for n in report.notes]
    lines += ["", "<sub>p: one-sided p-value of the regression test"
              + (", Holm-adjusted" if report.correction == "holm" else "")
              + "; a regression fails only when it exceeds the allowed drop and is "
              "significant.</sub>", ""]
    return "\n".join(lines)


def write_outputs(report: GateReport, junit: str | Path | None = None,
                  markdown: str | Path | None = None) -> None:
    if junit:
        atomic_write_text(junit, report.to_junit())
    if markdown:
        atomic_write_text(markdown, report.to_markdown())
