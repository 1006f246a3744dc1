"""The ``classification`` task: an image classifier (and the defenses around it) under
evasion attacks, scored as robust accuracy per defense x attack x eps.

The package holds the range: its scenario model (:mod:`.scenario`), the hooks of
:class:`~arange.core.task.Task` (:mod:`.runner`: jobs, rows, the worst case), its validity checks
(:mod:`.checks`), its scorecard (:mod:`.scorecard`) and its gate metrics (:mod:`.metrics`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from arange.core.task import Task, register_task

from .scenario import TASK


class ClassificationTask(Task):
    name = TASK
    description = "image classifier (and its defenses) under evasion attacks"
    short = "image classifiers and defenses under evasion attacks"
    unit = "img"
    libraries = ("torchvision", "numpy", "adversarial-robustness-toolbox", "foolbox",
                 "pydantic", "scikit-learn")
    runner = "arange.classification.runner"
    scorecard_model = "arange.classification.scorecard:Scorecard"

    def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
        from .scenario import load_classification_scenario
        return load_classification_scenario(raw, source, folder)

    def chain_mask(self, record: dict[str, Any]) -> Any:
        import torch
        return torch.tensor(record["robust"], dtype=torch.bool)

    def job_units(self, job: Any, mask: Any) -> int:
        return int(mask.sum())


register_task(ClassificationTask())
importlib.import_module("arange.classification.metrics")  # its gate metrics
