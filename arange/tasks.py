"""Tasks other than classification plug in here.

A task names its own scenario model (loaded from the YAML mapping when ``task:`` names it), its
runner and its terminal summary. Classification is built in (:mod:`arange.scenario`,
:mod:`arange.runner`); other tasks register a :class:`Task` with :data:`TASKS` from a module
listed in :data:`TASK_MODULES` (imported lazily, so torch-free readers stay light).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import Registry

# Modules that register extra tasks when imported.
TASK_MODULES: tuple[str, ...] = ("arange.hashing.task", "arange.forensics.task")
# The tasks' own component registries that ``arange list KIND`` shows: kind -> (module,
# attribute), imported on demand.
TASK_REGISTRIES: dict[str, tuple[str, str]] = {
    "hashes": ("arange.hashing.reference", "HASHES"),
    "inpainters": ("arange.forensics.inpainters", "INPAINTERS"),
    "detectors": ("arange.forensics.detector", "DETECTORS"),
}


@dataclass(frozen=True)
class Task:
    name: str
    # (raw mapping, source file name, folder of the file) -> validated scenario; raise
    # ScenarioError with "file: path: message" on bad input.
    load: Callable[[dict[str, Any], str, Path | None], Any]
    # (scenario, out folder or None, **options) -> scorecard (a pydantic model with .save)
    run: Callable[..., Any]
    # scorecard -> terminal summary
    summary: Callable[[Any], str]
    # ``arange list`` text
    description: str = ""


TASKS: Registry[Task] = Registry("task")
_imported = False


def register_task(name: str, load: Callable[[dict[str, Any], str, Path | None], Any],
                  runner: str, run: str, summary: str, description: str, short: str) -> None:
    """Register task ``name`` whose module ``runner`` holds its ``run`` and ``summary``
    functions; that module is imported on first use, so loading a scenario stays light.
    ``description``: the ``arange list`` text; ``short``: the registry's one-liner. Registering
    a name again (a module imported twice, e.g. a reload) does nothing."""
    if name in TASKS:
        return

    def _run(scenario: Any, out: Any = None, **options: Any) -> Any:
        return getattr(importlib.import_module(runner), run)(scenario, out, **options)

    def _summary(card: Any) -> str:
        return str(getattr(importlib.import_module(runner), summary)(card))

    TASKS.add(name, Task(name=name, load=load, run=_run, summary=_summary,
                         description=description), short)


def task_registry(kind: str) -> Registry[Any]:
    """The registry behind ``arange list KIND`` for a kind in :data:`TASK_REGISTRIES`."""
    module, attr = TASK_REGISTRIES[kind]
    registry: Registry[Any] = getattr(importlib.import_module(module), attr)
    return registry


def get_task(name: str) -> Task:
    global _imported
    if not _imported:
        _imported = True
        for module in TASK_MODULES:
            importlib.import_module(module)
    return TASKS.get(name)
