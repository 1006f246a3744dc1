"""The ``classification`` task: an image classifier (and the defenses around it) under
evasion attacks, scored as robust accuracy per defense x attack x eps.

The hooks of :class:`~arange.core.task.Task` are filled by :mod:`arange.runner` (jobs, the
budget-enforcing attack loop, rows and checks), :mod:`arange.scenario` and
:mod:`arange.scorecard`; this module wires them into the driver.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arange.core.task import Task, register_task

if TYPE_CHECKING:
    import torch

    from arange.core.driver import RunState
    from arange.core.executors import Chain, Progress

TASK = "classification"


class ClassificationTask(Task):
    name = TASK
    description = "image classifier (and its defenses) under evasion attacks"
    short = "image classifiers and defenses under evasion attacks"
    unit = "img"
    job_format = 1

    @property
    def libraries(self) -> tuple[str, ...]:  # type: ignore[override]
        from arange.runner import LIBRARIES
        return LIBRARIES

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        from arange.scenario import load_classification_scenario
        return load_classification_scenario(raw, source, folder)

    def prepare(self, scenario: Any, device: torch.device, progress: bool) -> Any:
        from arange.runner import prepare
        return prepare(scenario, device, progress)

    def plan(self, scenario: Any, prepared: Any) -> list[Chain]:
        from arange.runner import plan
        return plan(scenario, prepared)

    def run_job(self, prepared: Any, job: Any, mask: Any, progress: Progress | None
                ) -> dict[str, Any]:
        from arange.runner import run_planned_job
        return run_planned_job(prepared, job, mask, progress)

    def chain_mask(self, record: dict[str, Any]) -> Any:
        import torch
        return torch.tensor(record["robust"], dtype=torch.bool)

    def job_units(self, job: Any, mask: Any) -> int:
        return int(mask.sum())

    def identity(self, prepared: Any) -> dict[str, Any]:
        from arange.runner import identity
        return identity(prepared)

    def worker_prepare(self, scenario: Any, device: torch.device, identity: dict[str, Any],
                       where: str) -> Any:
        from arange.runner import worker_prepare
        return worker_prepare(scenario, device, identity, where)

    def scorecard(self, state: RunState) -> Any:
        from arange.runner import build_scorecard
        return build_scorecard(state)

    def summary(self, card: Any) -> str:
        from arange.scorecard import format_summary
        return format_summary(card)

    def load_scorecard(self, path: Path) -> Any:
        from arange.scorecard import load_scorecard
        return load_scorecard(path)


register_task(ClassificationTask())
importlib.import_module("arange.classification.metrics")  # its gate metrics
