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
TASK_MODULES: tuple[str, ...] = ("arange.hashing.task",)


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


def get_task(name: str) -> Task:
    global _imported
    if not _imported:
        _imported = True
        for module in TASK_MODULES:
            importlib.import_module(module)
    return TASKS.get(name)
