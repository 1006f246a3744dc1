"""Registers the ``hash_matching`` task with :mod:`arange.tasks`."""

from __future__ import annotations

from typing import Any

from arange.tasks import TASKS, Task

from .scenario import TASK, load_hash_scenario


def _run(scenario: Any, out: Any = None, **options: Any) -> Any:
    from .runner import run_hash_scenario
    return run_hash_scenario(scenario, out, **options)


def _summary(card: Any) -> str:
    from .runner import format_hash_summary
    return format_hash_summary(card)


if TASK not in TASKS:  # importing twice (e.g. a reload) must not raise
    TASKS.add(TASK, Task(name=TASK, load=load_hash_scenario, run=_run, summary=_summary,
                         description="perceptual-hash matcher (imagehash, PDQ) under "
                         "detection-avoidance and collision attacks"),
              "perceptual-hash matching under evasion and collision attacks")
