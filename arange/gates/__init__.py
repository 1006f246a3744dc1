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

from .evaluation import (
    bootstrap_regression,
    check_compatible,
    evaluate,
    failed_checks,
    gate,
)
from .evidence import (
    BASELINE_FORMAT,
    Evidence,
    check_card,
    decode_outcomes,
    encode_outcomes,
    evidence_from_baseline,
    load_reference,
    load_scorecard_evidence,
    read_json,
    scorecard_path,
)
from .metrics import (
    ALPHA,
    BOOTSTRAP,
    BOOTSTRAP_RESAMPLES,
    CORRECTIONS,
    METRICS,
    RULE_MODELS,
    GateError,
    Metric,
    OutcomeFn,
    Outcomes,
    PerImageFn,
    RegressionTest,
    Row,
    RowsFn,
    StatisticFn,
    log,
    register_metrics,
    row_label,
    same_value,
    task_metrics,
)
from .report import (
    MCNEMAR,
    NEWCOMBE,
    VALIDITY,
    CheckKind,
    CheckResult,
    GateReport,
    RuleResult,
    render_junit,
    render_markdown,
    render_text,
    write_outputs,
)
from .rules import (
    Rule,
    parse_rules,
    resolve_metric,
    rules_from_list,
)

__all__ = [
    "ALPHA",
    "BASELINE_FORMAT",
    "BOOTSTRAP",
    "BOOTSTRAP_RESAMPLES",
    "CORRECTIONS",
    "MCNEMAR",
    "METRICS",
    "NEWCOMBE",
    "RULE_MODELS",
    "VALIDITY",
    "CheckKind",
    "CheckResult",
    "Evidence",
    "GateError",
    "GateReport",
    "Metric",
    "OutcomeFn",
    "Outcomes",
    "PerImageFn",
    "RegressionTest",
    "Row",
    "RowsFn",
    "Rule",
    "RuleResult",
    "StatisticFn",
    "bootstrap_regression",
    "check_card",
    "check_compatible",
    "decode_outcomes",
    "encode_outcomes",
    "evaluate",
    "evidence_from_baseline",
    "failed_checks",
    "gate",
    "load_reference",
    "load_scorecard_evidence",
    "log",
    "parse_rules",
    "read_json",
    "register_metrics",
    "render_junit",
    "render_markdown",
    "render_text",
    "resolve_metric",
    "row_label",
    "rules_from_list",
    "same_value",
    "scorecard_path",
    "task_metrics",
    "write_outputs",
]
