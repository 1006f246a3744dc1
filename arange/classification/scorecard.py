"""The ``classification`` scorecard: typed, versioned JSON that every other tool reads (clean
accuracy per defense, one row per defense x attack x eps, the worst case over attacks, the
validity checks). Per-sample outcomes live in a side file (``samples.json``) referenced from
``files``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from arange.core.scorecard import (
    Check,
    Model,
    Rate,
    RunProvenance,
    ScorecardBase,
    format_checks,
    read_scorecard,
)

SCHEMA_VERSION = 1


class CleanRow(Model):
    defense: str
    n: int
    accuracy: Rate
    accuracy_ci: tuple[float, float]


class ResultRow(Model):
    job_id: str
    defense: str
    attack: str            # the scenario's label for the attack
    attack_name: str       # the registered attack
    kind: str              # white-box | black-box | noise | transfer
    norm: str
    eps: float
    eps_label: str
    params: dict[str, Any]
    n: int                 # samples evaluated
    n_attacked: int        # samples the attack was run on (clean-correct and, in cascade, unbroken)
    cumulative: bool = False  # cascade mode: robust accuracy after this and all earlier attacks
    clean_accuracy: Rate
    robust_accuracy: Rate
    robust_accuracy_ci: tuple[float, float]
    attack_success_rate: Rate  # among clean-correct samples that were attacked
    perturbation_max: float     # in the threat norm, of what was evaluated
    perturbation_mean: float
    budget_violations: int      # raw attack outputs that the runner had to project
    queries_mean: float | None = None
    seconds: float
    # An adaptive row (BPDA/EOT against a non-differentiable or randomised defense) and the
    # attack label of the ordinary row it adapts; the ordinary row keeps adaptive=False.
    adaptive: bool = False
    adaptive_method: str | None = None
    adapts: str | None = None
    # Why this row cannot be trusted (set by the checks, e.g. an adaptive attack does better).
    unreliable: str | None = None
    # ONNX targets: share of attacked samples where the attacked twin and the deployed runtime
    # (whose verdict counts) predict the same class.
    deployed_agreement: float | None = None


class WorstCaseRow(Model):
    defense: str
    norm: str
    eps: float
    eps_label: str
    n: int
    attacks: list[str]
    robust_accuracy: Rate
    robust_accuracy_ci: tuple[float, float]


class Provenance(RunProvenance):
    weights_source: str
    weights_sha256: str
    model_info: dict[str, Any] = Field(default_factory=dict)
    dataset: str
    dataset_fingerprint: str
    scenario_path: str | None
    scenario: dict[str, Any]
    jobs_reused: int = 0
    # per defense: how its model was built (weights, training time, test accuracy, ...)
    defenses: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Scorecard(ScorecardBase):
    schema_version: int = SCHEMA_VERSION
    task: str
    name: str
    provenance: Provenance
    clean: list[CleanRow]
    results: list[ResultRow]
    worst_case: list[WorstCaseRow]
    checks: list[Check]
    files: dict[str, str] = Field(default_factory=dict)

    def row(self, attack: str, eps: float, defense: str = "none") -> ResultRow:
        for r in self.results:
            if r.attack == attack and r.defense == defense and abs(r.eps - eps) < 1e-9:
                return r
        raise KeyError(f"no result for attack={attack!r} eps={eps} defense={defense!r}")


def format_summary(card: object) -> str:
    """A plain-text robustness table for the terminal."""
    if not isinstance(card, Scorecard):
        raise TypeError(f"not a classification scorecard: {type(card).__name__}")
    lines = [(f"{card.name}: {card.provenance.dataset} ({card.clean[0].n} samples), "
              f"device {card.provenance.device}, {card.provenance.seconds:.1f}s")]
    for c in card.clean:
        lo, hi = c.accuracy_ci
        lines.append(f"clean accuracy [{c.defense}]: {c.accuracy:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    header = f"{'defense':<12} {'attack':<20} {'norm':<5} {'eps':>8} {'robust acc':>10} " \
             f"{'95% CI':>13} {'success':>8} {'max pert':>9} {'secs':>7}"
    lines += ["", header, "-" * len(header)]
    for r in card.results:
        lo, hi = r.robust_accuracy_ci
        mark = " unreliable" if r.unreliable else ""
        lines.append(f"{r.defense:<12} {r.attack:<20} {r.norm:<5} {r.eps_label:>8} "
                     f"{r.robust_accuracy:>10.3f} {f'{lo:.3f}-{hi:.3f}':>13} "
                     f"{r.attack_success_rate:>8.3f} {r.perturbation_max:>9.4f} "
                     f"{r.seconds:>7.1f}{mark}")
    for why in dict.fromkeys(r.unreliable for r in card.results if r.unreliable):
        lines.append(f"unreliable: {why}")
    for w in card.worst_case:
        lo, hi = w.robust_accuracy_ci
        lines.append(f"{w.defense:<12} {'worst case':<20} {w.norm:<5} {w.eps_label:>8} "
                     f"{w.robust_accuracy:>10.3f} {f'{lo:.3f}-{hi:.3f}':>13}")
    lines += format_checks(card.checks)
    return "\n".join(lines)


def load_scorecard(path: str | Path) -> Scorecard:
    card = read_scorecard(path, "classification")
    assert isinstance(card, Scorecard)
    return card
