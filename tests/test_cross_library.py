"""Cross-library agreement: on the same model, samples and settings, arange's native FGSM and PGD
agree with ART's and foolbox's (run through their adapters, i.e. the real libraries) within 2
percentage points of robust accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import arange

from .conftest import tiny_scenario

EPS = ["4/255", "8/255"]
STEPS = 5
TOLERANCE = 0.02  # 2 percentage points of robust accuracy

# The same attack three ways: no random start, step size eps/4, STEPS steps.
GROUPS = {
    "fgsm": [("fgsm", {}), ("art.fgsm", {}), ("foolbox.fgsm", {"random_start": False})],
    "pgd": [("pgd", {"steps": STEPS, "rel_stepsize": 0.25, "random_start": False}),
            ("art.pgd", {"max_iter": STEPS, "rel_stepsize": 0.25, "num_random_init": 0}),
            ("foolbox.linf_pgd", {"steps": STEPS, "rel_stepsize": 0.25,
                                  "random_start": False})],
}


@pytest.fixture(scope="module")
def agreement_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    attacks = [{"name": name, "eps": EPS, "params": params}
               for group in GROUPS.values() for name, params in group]
    s = tiny_scenario(attacks=attacks, evaluation={"checks": {"large_eps": False,
                                                              "more_steps": False}})
    s["target"]["samples"] = 64
    out: Path = tmp_path_factory.mktemp("cross-library")
    return arange.run(s, out=out, progress=False)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_native_attacks_agree_with_art_and_foolbox(group: str, agreement_run: Any) -> None:
    card = agreement_run
    native, *others = [name for name, _ in GROUPS[group]]
    informative = False
    for eps in (4 / 255, 8 / 255):
        ours = card.row(native, eps)
        assert ours.n == 64
        if 0.05 < ours.robust_accuracy < ours.clean_accuracy - 0.05:
            informative = True
        for other in others:
            theirs = card.row(other, eps)
            assert abs(ours.robust_accuracy - theirs.robust_accuracy) <= TOLERANCE + 1e-9, (
                f"{native} {ours.robust_accuracy:.3f} vs {other} {theirs.robust_accuracy:.3f} "
                f"at eps {ours.eps_label}")
            assert theirs.budget_violations == 0
    assert informative, "the comparison needs an eps where the attack neither fails nor wins"
