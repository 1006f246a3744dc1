"""Evaluating rules on evidence: floors, ceilings and significance-tested regressions."""


from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..stats import (
    holm_adjust,
    mcnemar_exact_one_sided,
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    newcombe_one_sided,
    wilson_interval,
)

log = logging.getLogger(__name__)
from .evidence import Evidence, load_reference, load_scorecard_evidence
from .metrics import (
    _TOL,
    ALPHA,
    BOOTSTRAP,
    BOOTSTRAP_RESAMPLES,
    CORRECTIONS,
    GateError,
    Metric,
    Row,
    row_label,
    same_value,
    task_metrics,
)
from .report import MCNEMAR, NEWCOMBE, CheckKind, CheckResult, GateReport, RuleResult, _fmt_p
from .rules import Rule, _fmt_value, parse_rules, resolve_metric


def _matches(metric: Metric, rule: Rule, row: Row) -> bool:
    routed = {k for k, _ in metric.route}
    return all(same_value(row.get(k), v) for k, v in rule.selectors.items() if k not in routed)


def _same_row(metric: Metric, a: Row, b: Row) -> bool:
    return all(same_value(a.get(k), b.get(k)) for k in metric.key_fields)


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


def gate(scorecard: str | Path, baseline: str | Path | None = None, alpha: float = ALPHA,
         correction: str = "holm", allow_failed_checks: bool = False) -> GateReport:
    """Evaluate the gates echoed in ``scorecard`` (a file or run folder)."""
    current = load_scorecard_evidence(scorecard)
    rules = parse_rules(current.card, current.source)
    ref = load_reference(baseline) if baseline is not None else None
    return evaluate(current, rules, ref, alpha=alpha, correction=correction,
                    allow_failed_checks=allow_failed_checks)


