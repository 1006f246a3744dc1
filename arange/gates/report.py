"""The gate's verdict and its renderings: terminal text, JUnit XML, Markdown."""


from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..stats import (
    newcombe_interval,  # noqa: F401  (re-exported for callers of the gate API)
    )
from ..store import atomic_write_text

log = logging.getLogger(__name__)
from .metrics import Metric
from .rules import Rule


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


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
