"""The task protocol: what a range (classification, hash matching, forgery localisation)
supplies, declared once here and checked when a task registers.

The driver (:mod:`arange.core.driver`) owns everything around the jobs: the run folder, content
keys, atomic job records and resume, the executors (local, Ray), the progress bar, provenance and
writing the scorecard. A task fills in the hooks below, as a Lightning module fills a trainer's:

=====================  ==========================================================================
``load``               raw YAML mapping -> its validated scenario model (errors name file + path)
``prepare``            scenario, device -> what the jobs need (data, models, references); bad
                       input fails here, before anything is written
``plan``               -> the jobs, grouped in chains (:class:`~arange.core.executors.Chain`)
``run_job``            one job -> its record (JSON-able; ``_files`` maps run-folder paths to bytes
                       the driver writes before the record)
``chain_mask``         a record -> the input of the next job of its chain
``job_units``          a job's size for the progress bar
``identity``           what a Ray worker must reproduce (weights hash, data fingerprint, ...)
``worker_prepare``     ``prepare`` on a worker, checked against ``identity``
``scorecard``          the records -> the typed scorecard (metrics, CIs, checks, provenance)
``summary``            scorecard -> the terminal table
``load_scorecard``     a scorecard file -> the task's typed scorecard (gate, dashboard)
=====================  ==========================================================================

Gate metrics are registered by each task with :mod:`arange.gates`; dashboard views by the
dashboard's page registry, keyed by the task name.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import ArangeError
from ..registry import Registry

if TYPE_CHECKING:
    import torch

    from .driver import RunState
    from .executors import Chain, Progress


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
    """Base class of the ranges. Subclasses set ``name`` and the text attributes and implement
    every hook in :data:`HOOKS`; :func:`register_task` refuses a class that misses one."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""   # ``arange list`` text
    short: ClassVar[str] = ""         # the registry's one-liner
    unit: ClassVar[str] = "img"       # progress bar unit
    libraries: ClassVar[tuple[str, ...]] = ()  # versions recorded in the provenance

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        raise NotImplementedError

    def prepare(self, scenario: Any, device: torch.device, progress: bool) -> Any:
        raise NotImplementedError

    def plan(self, scenario: Any, prepared: Any) -> list[Chain]:
        raise NotImplementedError

    def run_job(self, prepared: Any, job: Any, mask: Any, progress: Progress | None
                ) -> dict[str, Any]:
        raise NotImplementedError

    def chain_mask(self, record: dict[str, Any]) -> Any:
        """The input of the next job in a chain; tasks without chains return ``None``."""
        return None

    def job_units(self, job: Any, mask: Any) -> int:
        """The job's size in progress-bar units (default: the job's ``units``, else 1)."""
        return int(getattr(job, "units", 1))

    def identity(self, prepared: Any) -> dict[str, Any]:
        raise NotImplementedError

    def worker_prepare(self, scenario: Any, device: torch.device, identity: dict[str, Any],
                       where: str) -> Any:
        raise NotImplementedError

    def scorecard(self, state: RunState) -> Any:
        raise NotImplementedError

    def summary(self, card: Any) -> str:
        raise NotImplementedError

    def load_scorecard(self, path: Path) -> Any:
        raise NotImplementedError


# The hooks every task must implement (the base class's defaults only for the optional ones).
HOOKS = ("load", "prepare", "plan", "run_job", "identity", "worker_prepare", "scorecard",
         "summary", "load_scorecard")


TASKS: Registry[Task] = Registry("task")
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


def register_task(task: Task) -> Task:
    """Register ``task``; a missing hook or a duplicate name raises (a module imported twice,
    e.g. a reload, registers the same class again, which is allowed)."""
    cls = type(task)
    if not cls.name:
        raise ArangeError(f"task {cls.__name__} has no name")
    missing = [h for h in HOOKS if getattr(cls, h) is getattr(Task, h)]
    if missing:
        raise ArangeError(f"task {cls.name!r} does not implement {', '.join(missing)}")
    if cls.name in TASKS:
        if type(TASKS.get(cls.name)).__qualname__ == cls.__qualname__:
            return TASKS.get(cls.name)
        raise ArangeError(f"task {cls.name!r} is already registered")
    TASKS.add(cls.name, task, cls.short)
    return task


def _import_tasks() -> None:
    global _imported
    if not _imported:
        _imported = True
        for module in TASK_MODULES:
            importlib.import_module(module)


def get_task(name: str) -> Task:
    _import_tasks()
    return TASKS.get(name)


def task_names() -> list[str]:
    _import_tasks()
    return list(TASKS.names())


def task_registry(kind: str) -> Registry[Any]:
    """The registry behind ``arange list KIND`` for a kind in :data:`TASK_REGISTRIES`."""
    module, attr = TASK_REGISTRIES[kind]
    registry: Registry[Any] = getattr(importlib.import_module(module), attr)
    return registry
