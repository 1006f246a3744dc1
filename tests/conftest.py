"""Shared fixtures: a private model cache and small real runs on the embedded digits data.

Everything here is real: a real ResNet trained on real data (small and few epochs, so the suite
stays fast on a 2-core CPU), real attacks, the real runner.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# A small but real target: ResNet-20 at width 8, 4 epochs on digits (~95% clean accuracy).
TINY_SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "target": {
        "model": "resnet20",
        "model_params": {"width": 8},
        "weights": "zoo",
        "training": {"epochs": 4},
        "dataset": {"name": "digits"},
        "samples": 96,
        "batch_size": 96,
    },
    "attacks": [
        {"name": "fgsm", "eps": ["4/255", "16/255"]},
        {"name": "pgd", "eps": ["4/255", "16/255"], "params": {"steps": 5}},
    ],
}


def tiny_scenario(**overrides: Any) -> dict[str, Any]:
    """A deep copy of the tiny scenario with top-level keys replaced."""
    s = copy.deepcopy(TINY_SCENARIO)
    s.update(copy.deepcopy(overrides))
    return s


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the zoo cache inside the test session (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("arange-cache")
    old = os.environ.get("ARANGE_CACHE_DIR")
    os.environ["ARANGE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ARANGE_CACHE_DIR", None)
    else:
        os.environ["ARANGE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One real run of the tiny scenario: (scorecard, run folder)."""
    import arange

    out = tmp_path_factory.mktemp("tiny-run")
    card = arange.run(tiny_scenario(), out=out, progress=False)
    return card, out


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The tiny scenario's trained model and its evaluation data: (model, x, y)."""
    import torch

    from arange.classification.runner import prepare_target
    from arange.core.scenario import scenario_from_dict

    target = prepare_target(scenario_from_dict(tiny_scenario()), torch.device("cpu"),
                            progress=False)
    return target.model, target.data.x, target.data.y
