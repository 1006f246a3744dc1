"""Evaluation-validity checks: unit tests on synthetic results, and deliberately broken targets
(masked gradients) run through the real runner, whose scorecards must flag them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from arange.classification.checks import (
    LARGE_EPS,
    MORE_STEPS,
    ExtraJob,
    check_budget,
    check_iterative_vs_single_step,
    check_large_eps,
    check_monotonic_eps,
    check_more_steps,
    check_whitebox_vs_weaker,
    probe_model,
)
from arange.classification.scenario import AttackSpec, DefenseSpec
from arange.classification.scorecard import ResultRow, load_scorecard
from arange.core.scenario import scenario_from_dict
from arange.defenses import Defense
from arange.errors import ScenarioError
from arange.registry import DEFENSES, Entry

from .conftest import tiny_scenario


def _row(attack: str, eps: float, acc: float, *, name: str | None = None, kind: str = "white-box",
         n: int = 100, pert: float | None = None, violations: int = 0,
         cumulative: bool = False) -> ResultRow:
    return ResultRow(job_id=f"none__{attack}__linf-{eps}", defense="none", attack=attack,
                     attack_name=name or attack, kind=kind, norm="linf", eps=eps,
                     eps_label=f"{eps:g}", params={}, n=n, n_attacked=90, cumulative=cumulative,
                     clean_accuracy=0.9, robust_accuracy=acc, robust_accuracy_ci=(0.0, 1.0),
                     attack_success_rate=0.5, perturbation_max=eps if pert is None else pert,
                     perturbation_mean=eps / 2, budget_violations=violations, seconds=1.0)


# ---------------------------------------------------------------------------- row checks

def test_monotonic_eps() -> None:
    ok = [_row("pgd", 0.01, 0.5), _row("pgd", 0.02, 0.3)]
    assert check_monotonic_eps(ok).status == "pass"
    bad = check_monotonic_eps([_row("pgd", 0.01, 0.3), _row("pgd", 0.02, 0.5)])
    assert bad.status == "fail" and "pgd" in bad.message
    # cumulative suite components are not a per-attack curve; the suite row itself is
    comps = [_row("standard/square", 0.01, 0.3, name="square", cumulative=True),
             _row("standard/square", 0.02, 0.5, name="square", cumulative=True)]
    assert check_monotonic_eps(comps).status == "skip"
    suite = [_row("standard", 0.01, 0.3, name="suite:standard"),
             _row("standard", 0.02, 0.5, name="suite:standard")]
    assert check_monotonic_eps(suite).status == "fail"


def test_iterative_vs_single_step_knows_suites_and_adapters() -> None:
    rows = [_row("fgsm", 0.03, 0.4), _row("standard", 0.03, 0.2, name="suite:standard"),
            _row("art.apgd", 0.03, 0.1)]
    check = check_iterative_vs_single_step(rows)
    assert check.status == "pass" and "2 comparison" in check.message
    # a minimal-norm attack projected onto the ball is not held to the standard of PGD
    rows.append(_row("art.deepfool", 0.03, 0.6))
    assert check_iterative_vs_single_step(rows).status == "pass"
    rows.append(_row("foolbox.linf_pgd", 0.03, 0.6))
    check = check_iterative_vs_single_step(rows)
    assert check.status == "fail" and "foolbox.linf_pgd" in check.message


def test_whitebox_vs_blackbox() -> None:
    rows = [_row("pgd", 0.03, 0.2), _row("art.square", 0.03, 0.5, kind="black-box"),
            _row("noise", 0.03, 0.8, kind="noise")]
    assert check_whitebox_vs_weaker(rows).status == "pass"
    rows[0] = _row("pgd", 0.03, 0.85)
    check = check_whitebox_vs_weaker(rows)
    assert check.status == "fail" and "art.square" in check.message and "noise" in check.message


def test_budget() -> None:
    assert check_budget([_row("pgd", 0.03, 0.2)]).status == "pass"
    assert check_budget([_row("pgd", 0.03, 0.2, violations=3)]).status == "warn"
    assert check_budget([_row("pgd", 0.03, 0.2, pert=0.05)]).status == "fail"


# ---------------------------------------------------------------------------- extra-run checks

def _extra(check: str, n: int, base_broken: int = 0, chance: float = 0.1) -> ExtraJob:
    mask = torch.zeros(200, dtype=torch.bool)
    mask[:n] = True
    base = torch.ones(200, dtype=torch.bool)
    base[:base_broken] = False
    spec = AttackSpec(name="pgd", label="x", eps=[0.03], params={"steps": 20})
    return ExtraJob(check, DefenseSpec(name="none"), spec, 0.03, mask,
                    {"samples": n}, base_robust=base & mask, base_label="pgd", chance=chance)


def _robust(n: int, broken: int) -> torch.Tensor:
    r = torch.zeros(200, dtype=torch.bool)
    r[broken:n] = True
    return r


def test_large_eps_check() -> None:
    assert check_large_eps(_extra(LARGE_EPS, 100), _robust(100, 98)).status == "pass"
    assert check_large_eps(_extra(LARGE_EPS, 100), _robust(100, 85)).status == "warn"
    fail = check_large_eps(_extra(LARGE_EPS, 100), _robust(100, 20))
    assert fail.status == "fail" and "80.0%" in fail.message and "masked" in fail.message


def test_more_steps_check() -> None:
    # configured attack broke 50 of 100; doubling steps broke...
    assert check_more_steps(_extra(MORE_STEPS, 100, 50), _robust(100, 50), {}).status == "pass"
    assert check_more_steps(_extra(MORE_STEPS, 100, 50), _robust(100, 55), {}).status == "warn"
    weaker = check_more_steps(_extra(MORE_STEPS, 100, 50), _robust(100, 30), {})
    assert weaker.status == "fail" and "weaker" in weaker.message
    stronger = check_more_steps(_extra(MORE_STEPS, 100, 50), _robust(100, 75), {})
    assert stronger.status == "fail" and "not converged" in stronger.message


def test_checks_config_is_strict() -> None:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(tiny_scenario(evaluation={"checks": {"large_epss": False}}),
                           source="s.yaml")
    assert "evaluation.checks.large_epss" in str(e.value)
    assert "did you mean 'large_eps'" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(tiny_scenario(evaluation={"checks": {"more_steps": {"attack": "pgdd"}}}),
                           source="s.yaml")
    assert "evaluation.checks.more_steps.attack" in str(e.value) and "'pgd'" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(tiny_scenario(evaluation={"checks": {"more_steps": {"attack": "fgsm"}}}),
                           source="s.yaml")
    assert "no iteration or restart parameter" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(tiny_scenario(evaluation={"checks": {"samples": 2}}), source="s.yaml")
    assert "evaluation.checks.samples" in str(e.value)
    s = scenario_from_dict(tiny_scenario(evaluation={"checks": {"large_eps": False,
                                                                "more_steps": {"factor": 4}}}))
    assert not s.evaluation.checks.large_eps.enabled
    assert s.evaluation.checks.more_steps.factor == 4


# ---------------------------------------------------------------------------- model probes

class Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


class Noisy(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + 0.05 * torch.randn_like(x))


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           was_training: bool = False) -> dict[str, str]:
    return {c.name: c.status for c in probe_model(model, x[:16], y[:16], "none", was_training)}


def test_probes_flag_probabilities_randomness_and_train_mode(tiny_model: Any) -> None:
    model, x, y = tiny_model
    clean = _probe(model, x, y)
    assert clean == {"train_mode": "pass", "randomness": "pass", "logits": "pass",
                     "gradients": "pass"}
    assert _probe(Probabilities(model).eval(), x, y)["logits"] == "warn"
    assert _probe(Noisy(model).eval(), x, y)["randomness"] == "warn"
    assert _probe(model, x, y, was_training=True)["train_mode"] == "warn"


# ---------------------------------------------------------------------------- broken targets

class _Round(nn.Module):
    """Non-differentiable input quantisation: round() has zero gradient everywhere."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


class _Saturate(nn.Module):
    """Logits scaled by 1e4: softmax saturates and cross-entropy gradients vanish."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


class RoundInputs(Defense):
    """Test target: quantises inputs with a non-differentiable round."""

    differentiable = False

    def wrap(self, model: nn.Module) -> nn.Module:
        return _Round(model)


class SaturateLogits(Defense):
    """Test target: multiplies the logits by 1e4."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return _Saturate(model)


@pytest.fixture
def broken_defenses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the broken targets for one test only (removed again afterwards)."""
    DEFENSES.names()  # load the built-ins first
    for name, cls in (("test-round", RoundInputs), ("test-saturate", SaturateLogits)):
        monkeypatch.setitem(DEFENSES._entries, name, Entry(name, cls, cls.__doc__ or ""))


def _broken_scenario(tmp_path: Path) -> Path:
    s = tiny_scenario(
        defenses=["none", "test-round", "test-saturate"],
        attacks=[{"name": "fgsm", "eps": ["8/255"]},
                 {"name": "pgd", "eps": ["4/255", "8/255"], "params": {"steps": 5}},
                 {"name": "noise", "eps": ["8/255"]}],
        evaluation={"checks": {"samples": 32, "large_eps": {"steps": 5},
                               "more_steps": False}})
    s["target"]["samples"] = 32
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def test_masked_gradients_are_flagged_not_scored(broken_defenses: None, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from arange.cli import main

    path = _broken_scenario(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--strict", "-q"]) == 1
    assert "validity check(s) failed (--strict)" in capsys.readouterr().err

    card = load_scorecard(out / "scorecard.json")
    status = {c.name: c.status for c in card.checks}
    for defense in ("test-round", "test-saturate"):
        # the masked targets look very robust to PGD ...
        assert card.row("pgd", 8 / 255, defense).robust_accuracy >= \
            card.row("pgd", 8 / 255, "none").robust_accuracy + 0.2
        # ... and the scorecard says why that number is not to be believed
        assert status[f"gradients ({defense})"] == "fail"
        assert status[f"large_eps ({defense})"] == "fail"
        msg = card.check(f"large_eps ({defense})").message
        assert "masked gradients" in msg
    # the unbroken target passes the same checks
    assert status["gradients"] == "pass"
    assert status["large_eps"] == "pass"
    assert status["more_steps"] == "skip"


def test_scenario_without_failed_checks_passes_strict(tmp_path: Path) -> None:
    from arange.cli import main

    s = tiny_scenario(attacks=[{"name": "pgd", "eps": ["8/255"], "params": {"steps": 10}}],
                      evaluation={"checks": {"samples": 16, "large_eps": {"steps": 5},
                                             "more_steps": {"factor": 2,
                                                            "extra_restarts": 0}}})
    s["target"]["samples"] = 16
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(s))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--strict", "-q"]) == 0
    card = load_scorecard(tmp_path / "run" / "scorecard.json")
    assert card.check("more_steps").status in ("pass", "warn")
    assert card.check("large_eps").status == "pass"
