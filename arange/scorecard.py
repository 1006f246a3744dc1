"""The scorecard: typed, versioned JSON that every other tool reads.

``schema_version`` is bumped whenever a field changes meaning; readers refuse versions they do
not know rather than misreading them. Per-sample outcomes live in a side file (``samples.json``)
referenced from ``files``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArangeError
from .store import atomic_write_text

SCHEMA_VERSION = 1
CheckStatus = Literal["pass", "warn", "fail", "skip"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A rate read back from a file: finite and in [0, 1], or the scorecard is refused.
Rate = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class CleanRow(_Model):
    defense: str
    n: int
    accuracy: Rate
    accuracy_ci: tuple[float, float]


class ResultRow(_Model):
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


class WorstCaseRow(_Model):
    defense: str
    norm: str
    eps: float
    eps_label: str
    n: int
    attacks: list[str]
    robust_accuracy: Rate
    robust_accuracy_ci: tuple[float, float]


class Check(_Model):
    name: str
    status: CheckStatus
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class RunProvenance(_Model):
    """What every task's provenance starts with: the software, the machine, the seed and the
    clock (built by :func:`arange.core.driver.run_environment`)."""

    arange_version: str
    git_sha: str | None
    python: str
    platform: str
    torch_version: str
    libraries: dict[str, str]
    device: str
    seed: int
    started: str
    finished: str
    seconds: float


class DataProvenance(_Model):
    """What the image tasks' provenance (hash matching, forgery localisation) ends with: the
    data scored and the scenario echoed back.

    A task puts its own fields between the two parts by listing its bases as
    ``(DataProvenance, <its fields>, RunProvenance)``: pydantic orders inherited fields from the
    last base to the first, so the JSON keys keep that order."""

    dataset: str
    dataset_fingerprint: str
    dataset_info: dict[str, Any] = Field(default_factory=dict)
    scenario_path: str | None
    scenario: dict[str, Any]
    jobs_reused: int = 0


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


class ScorecardBase(_Model):
    """What every task's scorecard does (its fields are its own, so each keeps its JSON order):
    serialise itself and find one of its evaluation-validity ``checks``."""

    if TYPE_CHECKING:  # declared by each subclass where its JSON puts it
        checks: list[Check]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


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


def format_checks(checks: Iterable[Check]) -> list[str]:
    """The closing lines of a terminal summary: one per evaluation-validity check."""
    return ["", "checks:", *(f"  [{c.status:>4}] {c.name}: {c.message}" for c in checks)]


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


_Card = TypeVar("_Card", bound=BaseModel)


def read_scorecard(path: str | Path, model: type[_Card], schema_version: int,
                   task: str | None = None) -> _Card:
    """Read a scorecard JSON file and validate it as ``model`` (any task's scorecard class);
    ``task``: the ``task`` field the file must carry. Bad input raises :class:`ArangeError`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArangeError(f"{path}: no such scorecard") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArangeError(f"{path}: not a readable scorecard JSON file: {e}") from e
    if task is not None and (not isinstance(raw, dict) or raw.get("task") != task):
        raise ArangeError(f"{path}: not a {task} scorecard")
    if not isinstance(raw, dict) or "schema_version" not in raw:
        raise ArangeError(f"{path}: not an arange scorecard (no schema_version)")
    if raw["schema_version"] != schema_version:
        raise ArangeError(f"{path}: scorecard schema_version {raw['schema_version']} is not "
                          f"supported by this arange (reads version {schema_version}); re-run "
                          "the scenario or use a matching arange version")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ArangeError(f"{path}: invalid scorecard: {loc}: {first['msg']}") from e


def load_scorecard(path: str | Path) -> Scorecard:
    return read_scorecard(path, Scorecard, SCHEMA_VERSION)
