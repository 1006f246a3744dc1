"""The task protocol: every registered task passes the same contract (timm-style tests over
the registry), and registration refuses a task that does not fit it."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from arange.core.task import RUNNER_HOOKS, TASKS, Task, get_task, register_task, task_names
from arange.errors import ArangeError

ROOT = Path(__file__).resolve().parent.parent


def test_the_three_ranges_are_registered() -> None:
    assert task_names() == ["classification", "forgery_localization", "hash_matching"]


@pytest.mark.parametrize("name", ["classification", "hash_matching", "forgery_localization"])
def test_every_task_fills_every_hook(name: str) -> None:
    task = get_task(name)
    runner = importlib.import_module(task.runner)
    arity = {"prepare": 3, "plan": 2, "run_planned_job": 4, "identity": 1,
             "worker_prepare": 4, "build_scorecard": 1, "summary": 1}
    for hook in RUNNER_HOOKS:
        fn = getattr(runner, hook, None)
        assert callable(fn), f"{task.runner} has no {hook}()"
        params = inspect.signature(fn).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        assert len(required) <= arity[hook] <= len(positional), (hook, list(params))
    assert task.description and task.short and task.libraries
    card = task.scorecard_class()
    assert card.model_fields["task"].annotation is not None
    assert isinstance(card.model_fields["schema_version"].default, int)


def test_scorecard_models_load_without_torch() -> None:
    """The gate and the dashboard read every task's scorecard without importing torch."""
    code = ("import sys\nfrom arange.core.task import task_names, get_task\n"
            "for n in ('classification', 'hash_matching', 'forgery_localization'):\n"
            "    get_task(n).scorecard_class()\n"
            "import arange.gates\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("scenario", sorted((ROOT / "scenarios").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_scenario_loads_through_its_task(scenario: Path) -> None:
    from arange.core.scenario import load_scenario

    s = load_scenario(scenario)
    assert s.task in task_names()


def test_registration_refuses_a_task_that_does_not_fit() -> None:
    class NoName(Task):
        pass

    class NoLoad(Task):
        name = "no_load"
        runner = "arange.classification.runner"

    class NoRunner(Task):
        name = "no_runner"
        runner = "arange.no_such_module"

        def load(self, raw: dict[str, Any], source: str, folder: Path | None) -> Any:
            return raw

    class NoScorecard(NoRunner):
        name = "no_scorecard"
        runner = "arange.classification.runner"

    class Duplicate(NoScorecard):
        name = "classification"
        scorecard_model = "arange.classification.scorecard:Scorecard"

    for cls, message in ((NoName, "has no name"), (NoLoad, "does not implement load"),
                         (NoRunner, "runner module 'arange.no_such_module' not found"),
                         (NoScorecard, "scorecard_model must name its scorecard class"),
                         (Duplicate, "'classification' is already registered")):
        with pytest.raises(ArangeError, match=message):
            register_task(cls())
    assert "no_runner" not in TASKS
