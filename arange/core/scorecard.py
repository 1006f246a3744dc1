"""What every range's scorecard shares: the strict JSON model base, rates, validity checks,
the provenance every run starts with (and the data part of the image ranges'), saving, and
reading any task's scorecard back with its schema version checked.

``schema_version`` is bumped whenever a field changes meaning; readers refuse versions they do
not know rather than misreading them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arange.errors import ArangeError
from arange.store import atomic_write_text

from .safeio import short

CheckStatus = Literal["pass", "warn", "fail", "skip"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A rate read back from a file: finite and in [0, 1], or the scorecard is refused.
Rate = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Check(Model):
    name: str
    status: CheckStatus
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class RunProvenance(Model):
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


class DataProvenance(Model):
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


class ScorecardBase(Model):
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


def format_checks(checks: Iterable[Check]) -> list[str]:
    """The closing lines of a terminal summary: one per evaluation-validity check."""
    return ["", "checks:", *(f"  [{c.status:>4}] {c.name}: {c.message}" for c in checks)]


class ScorecardError(ArangeError):
    """A scorecard file cannot be read: missing, damaged, of another task or of a schema
    version this arange does not read (the message names the file and the fix)."""


def check_scorecard(raw: Any, source: str, task: str | None = None) -> ScorecardBase:
    """Validate parsed scorecard JSON as its task's typed scorecard (``task``: the task the
    file must be of). Used by every reader: the runners, the gate and the dashboard."""
    from .task import get_task

    if not isinstance(raw, dict):
        raise ScorecardError(f"{source}: not an arange scorecard (the top level is a "
                             f"{type(raw).__name__}, not an object)")
    version = raw.get("schema_version")
    if version is None:
        raise ScorecardError(f"{source}: not an arange scorecard (no schema_version field)")
    name = raw.get("task", "classification")
    if not isinstance(name, str):
        raise ScorecardError(f"{source}: task: must be a string (got {short(name, 40)})")
    if task is not None and name != task:
        raise ScorecardError(f"{source}: not a {task} scorecard (task {short(name, 40)})")
    try:
        model = get_task(name).scorecard_class()
    except ArangeError as e:
        raise ScorecardError(f"{source}: task {short(name, 40)} is not one this arange reads "
                             f"({e})") from e
    newest = model.model_fields["schema_version"].default
    if not isinstance(version, int) or isinstance(version, bool):
        raise ScorecardError(f"{source}: schema_version must be an integer (got "
                             f"{short(version, 40)})")
    if version < newest:
        raise ScorecardError(
            f"{source}: this scorecard uses an older schema (schema_version {version}); this "
            f"arange reads version {newest}. Run the scenario again with this arange version "
            "to get a current scorecard, or read it with the arange version that wrote it")
    if version > newest:
        raise ScorecardError(
            f"{source}: this scorecard uses a newer schema (schema_version {version}) than "
            f"this arange reads ({newest}); upgrade arange to read it")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise ScorecardError(f"{source}: invalid scorecard: {loc}: {first['msg']}{more}; run "
                             "the scenario again to rewrite it") from e


def read_scorecard(path: str | Path, task: str | None = None) -> ScorecardBase:
    """Read a scorecard file (``task``: the task it must be of) as its typed scorecard."""
    from .safeio import load_json

    path = Path(path)
    if not path.is_file():
        raise ScorecardError(f"{path}: no such scorecard")
    return check_scorecard(load_json(path, "scorecard", error=ScorecardError), str(path), task)
