"""arange: an AI security range for image models.

Python API::

    import arange
    card = arange.run("scenarios/pgd_resnet.yaml")
    print(card.results[0].robust_accuracy)

Attacks work on your own ``nn.Module`` and tensors too::

    from arange.attacks import PGD
    x_adv = PGD(steps=20)(model, x, y, eps=8/255)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ArangeError, ScenarioError
from .registry import (
    ATTACKS,
    DATASETS,
    DEFENSES,
    MODELS,
    create_attack,
    create_defense,
    list_attacks,
    list_datasets,
    list_defenses,
    list_models,
    register_attack,
    register_dataset,
    register_defense,
    register_model,
)

if TYPE_CHECKING:
    from .classification.scenario import Scenario
    from .classification.scorecard import Scorecard


def run(scenario: str | Path | Scenario | dict[str, Any], out: str | Path | None = None,
        **options: Any) -> Scorecard:
    """Run a scenario (a path, a dict or a validated scenario of any task) and return its
    scorecard (options: ``device``, ``resume``, ``progress``, ``executor``, ...)."""
    from .core.driver import run as run_scenario
    from .core.scenario import load_scenario, scenario_from_dict

    if isinstance(scenario, (str, Path)):
        scenario = load_scenario(scenario)
    elif isinstance(scenario, dict):
        scenario = scenario_from_dict(scenario)
    if not isinstance(getattr(scenario, "task", None), str):
        raise TypeError("scenario must be a path, a dict or a validated scenario")
    return run_scenario(scenario, out, **options)  # type: ignore[no-any-return]


__all__ = [
    "ATTACKS",
    "DATASETS",
    "DEFENSES",
    "MODELS",
    "ArangeError",
    "ScenarioError",
    "__version__",
    "create_attack",
    "create_defense",
    "list_attacks",
    "list_datasets",
    "list_defenses",
    "list_models",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_model",
    "run",
]
