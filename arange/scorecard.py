"""The scorecard: typed, versioned JSON that every other tool reads.

``schema_version`` is bumped whenever a field changes meaning; readers refuse versions they do
not know rather than misreading them. Per-sample outcomes live in a side file (``samples.json``)
referenced from ``files``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArangeError
from .store import atomic_write_text

SCHEMA_VERSION = 1
CheckStatus = Literal["pass", "warn", "fail", "skip"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CleanRow(_Model):
    defense: str
    n: int
    accuracy: float
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
    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]
    attack_success_rate: float  # among clean-correct samples that were attacked
    perturbation_max: float     # in the threat norm, of what was evaluated
    perturbation_mean: float
    budget_violations: int      # raw attack outputs that the runner had to project
    queries_mean: float | None = None
    seconds: float


class WorstCaseRow(_Model):
    defense: str
    norm: str
    eps: float
    eps_label: str
    n: int
    attacks: list[str]
    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]


class Check(_Model):
    name: str
    status: CheckStatus
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Provenance(_Model):
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
    weights_source: str
    weights_sha256: str
    model_info: dict[str, Any] = Field(default_factory=dict)
    dataset: str
    dataset_fingerprint: str
    scenario_path: str | None
    scenario: dict[str, Any]
    jobs_reused: int = 0


class Scorecard(_Model):
    schema_version: int = SCHEMA_VERSION
    task: str
    name: str
    provenance: Provenance
    clean: list[CleanRow]
    results: list[ResultRow]
    worst_case: list[WorstCaseRow]
    checks: list[Check]
    files: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    def row(self, attack: str, eps: float, defense: str = "none") -> ResultRow:
        for r in self.results:
            if r.attack == attack and r.defense == defense and abs(r.eps - eps) < 1e-9:
                return r
        raise KeyError(f"no result for attack={attack!r} eps={eps} defense={defense!r}")

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


def load_scorecard(path: str | Path) -> Scorecard:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArangeError(f"{path}: no such scorecard") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArangeError(f"{path}: not a readable scorecard JSON file: {e}") from e
    if not isinstance(raw, dict) or "schema_version" not in raw:
        raise ArangeError(f"{path}: not an arange scorecard (no schema_version)")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise ArangeError(f"{path}: scorecard schema_version {raw['schema_version']} is not "
                          f"supported by this arange (reads version {SCHEMA_VERSION}); re-run "
                          "the scenario or use a matching arange version")
    try:
        return Scorecard.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ArangeError(f"{path}: invalid scorecard: {loc}: {first['msg']}") from e
