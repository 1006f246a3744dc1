"""The task protocol: what a range (classification, hash matching, forgery localisation)
supplies, declared once here and checked when a task registers.

The driver (:mod:`arange.core.driver`) owns everything around the jobs: the run folder, content
keys, atomic job records and resume, the executors (local, Ray), the progress bar, provenance and
writing the scorecard. A task fills in the hooks below, as a Lightning module fills a trainer's:

=====================  ==========================================================================
``load``               raw YAML mapping -> its validated scenario model (errors name file + path)

and, as functions of its ``runner`` module (imported on first use):

``prepare``            scenario, device -> what the jobs need (data, models, references); bad
                       input fails here, before anything is written
``plan``               -> the jobs, grouped in chains (:class:`~arange.core.executors.Chain`)
``run_planned_job``    one job -> its record (JSON-able; ``_files`` maps run-folder paths to bytes
                       the driver writes before the record)
``identity``           what a Ray worker must reproduce (weights hash, data fingerprint, ...)
``worker_prepare``     ``prepare`` on a worker, checked against ``identity``
``build_scorecard``    the records -> the typed scorecard (metrics, CIs, checks, provenance)
``summary``            scorecard -> the terminal table
=====================  ==========================================================================

``scorecard_model`` names the task's typed scorecard class (``module:Class``, torch-free): every
reader (the runner, ``arange gate``, the dashboard) validates a scorecard file with it
(:func:`arange.core.scorecard.read_scorecard`).

A task with chained jobs overrides :meth:`Task.chain_mask` (a record -> the next job's input)
and :meth:`Task.job_units` (a job's size for the progress bar). Gate metrics are registered by each task with :mod:`arange.gates`; dashboard views by the
dashboard's page registry, keyed by the task name.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import ArangeError
from ..registry import Registry, ensure_loaded

if TYPE_CHECKING:
    import torch

    from .driver import RunState
    from .executors import Chain, Progress
    from .scorecard import ScorecardBase


class Job(Protocol):
    """What the driver needs of a job: a content key (everything its record depends on) and
    a file-safe id, unique within a run."""

    @property
    def key(self) -> str: ...

    @property
    def job_id(self) -> str: ...


def content_key(spec: dict[str, Any]) -> str:
    """The sha256 of a JSON-able description of everything a job's result depends on."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


class Task:
    """Base class of the ranges. A subclass sets ``name``, the text attributes, ``runner`` (the
    module holding the hooks in :data:`RUNNER_HOOKS`, imported on first use so that loading a
    scenario stays light) and implements :meth:`load`; :func:`register_task` checks both."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""   # ``arange list`` text
    short: ClassVar[str] = ""         # the registry's one-liner
    runner: ClassVar[str] = ""        # module with the hooks below
    scorecard_model: ClassVar[str] = ""  # "module:Class" of the typed scorecard
    unit: ClassVar[str] = "img"       # progress bar unit
    libraries: ClassVar[tuple[str, ...]] = ()  # versions recorded in the provenance

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        """Raw YAML mapping -> the task's validated scenario (errors name file and path)."""
        raise NotImplementedError

    def _hook(self, name: str) -> Any:
        fn = getattr(importlib.import_module(self.runner), name, None)
        if not callable(fn):
            raise ArangeError(f"task {self.name!r}: {self.runner} has no {name}()")
        return fn

    def prepare(self, scenario: Any, device: torch.device, progress: bool) -> Any:
        return self._hook("prepare")(scenario, device, progress)

    def plan(self, scenario: Any, prepared: Any) -> list[Chain]:
        chains: list[Chain] = self._hook("plan")(scenario, prepared)
        return chains

    def run_job(self, prepared: Any, job: Any, mask: Any, progress: Progress | None
                ) -> dict[str, Any]:
        record: dict[str, Any] = self._hook("run_planned_job")(prepared, job, mask, progress)
        return record

    def chain_mask(self, record: dict[str, Any]) -> Any:
        """The input of the next job in a chain; tasks without chains return ``None``."""
        return None

    def job_units(self, job: Any, mask: Any) -> int:
        """The job's size in progress-bar units (default: the job's ``units``, else 1)."""
        return int(getattr(job, "units", 1))

    def identity(self, prepared: Any) -> dict[str, Any]:
        identity: dict[str, Any] = self._hook("identity")(prepared)
        return identity

    def worker_prepare(self, scenario: Any, device: torch.device, identity: dict[str, Any],
                       where: str) -> Any:
        return self._hook("worker_prepare")(scenario, device, identity, where)

    def scorecard(self, state: RunState) -> Any:
        return self._hook("build_scorecard")(state)

    def summary(self, card: Any) -> str:
        return str(self._hook("summary")(card))

    def scorecard_class(self) -> type[ScorecardBase]:
        """The typed scorecard class named by ``scorecard_model``."""
        module, _, attr = self.scorecard_model.partition(":")
        cls = getattr(importlib.import_module(module), attr, None)
        if not (isinstance(cls, type) and "schema_version" in getattr(cls, "model_fields", {})):
            raise ArangeError(f"task {self.name!r}: scorecard_model {self.scorecard_model!r} is "
                              "not a scorecard class")
        return cls


# The functions a task's runner module defines (Task's methods of the same role call them).
RUNNER_HOOKS = ("prepare", "plan", "run_planned_job", "identity", "worker_prepare",
                "build_scorecard", "summary")


# Modules that register the built-in tasks when imported (lazily: torch-free readers such as
# the dashboard and the gate stay light).
TASK_MODULES: tuple[str, ...] = ("arange.classification", "arange.hashing.task",
                                 "arange.forensics.task")
# The tasks' own component registries that ``arange list KIND`` shows: kind -> (module,
# attribute), imported on demand.
TASK_REGISTRIES: dict[str, tuple[str, str]] = {
    "hashes": ("arange.hashing.reference", "HASHES"),
    "inpainters": ("arange.forensics.inpainters", "INPAINTERS"),
    "detectors": ("arange.forensics.detector", "DETECTORS"),
}
_imported = False


def _import_tasks() -> None:
    global _imported
    if not _imported:
        _imported = True
        for module in TASK_MODULES:
            importlib.import_module(module)


# Looking a task up imports the built-in tasks only, not the attack and model registries
# (torch); a name not found there loads the plugin packages too (see get_task).
TASKS: Registry[Task] = Registry("task", loader=_import_tasks)


def register_task(task: Task) -> Task:
    """Register ``task``: it needs a name, its own ``load`` and a ``runner`` module that exists
    (its hooks are checked when first used, and by the task contract tests); a duplicate name
    raises (a module imported twice, e.g. a reload, registers the same class again, which is
    allowed)."""
    import importlib.util

    cls = type(task)
    if not cls.name:
        raise ArangeError(f"task {cls.__name__} has no name")
    if cls.load is Task.load:
        raise ArangeError(f"task {cls.name!r} does not implement load")
    if not cls.runner or importlib.util.find_spec(cls.runner) is None:
        raise ArangeError(f"task {cls.name!r}: runner module {cls.runner!r} not found")
    if ":" not in cls.scorecard_model:
        raise ArangeError(f"task {cls.name!r}: scorecard_model must name its scorecard class as "
                          f"'module:Class' (got {cls.scorecard_model!r})")
    if cls.name in TASKS:
        if type(TASKS.get(cls.name)).__qualname__ == cls.__qualname__:
            return TASKS.get(cls.name)
        raise ArangeError(f"task {cls.name!r} is already registered")
    TASKS.add(cls.name, task, cls.short)
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        ensure_loaded()  # a task from an installed plugin package
    return TASKS.get(name)


def task_names() -> list[str]:
    ensure_loaded()
    return list(TASKS.names())


def task_registry(kind: str) -> Registry[Any]:
    """The registry behind ``arange list KIND`` for a kind in :data:`TASK_REGISTRIES`."""
    module, attr = TASK_REGISTRIES[kind]
    registry: Registry[Any] = getattr(importlib.import_module(module), attr)
    return registry
