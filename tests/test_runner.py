"""The runner: budget enforcement, worst case, cascade, resume, scorecard contents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import arange
from arange.attacks.base import Attack, AttackResult
from arange.classification.scorecard import SCHEMA_VERSION, Scorecard, load_scorecard
from arange.registry import ATTACKS
from arange.threat import Norm, ThreatModel, enforce, norms

from .conftest import tiny_scenario


def test_scorecard_shape(tiny_run: tuple[Scorecard, Path]) -> None:
    card, out = tiny_run
    raw = json.loads((out / "scorecard.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert load_scorecard(out / "scorecard.json") == card
    prov = card.provenance
    assert len(prov.weights_sha256) == 64 and len(prov.dataset_fingerprint) == 64
    assert prov.scenario["target"]["model"] == "resnet20"
    assert prov.torch_version == torch.__version__
    assert prov.seed == 0 and prov.device == "cpu"
    assert prov.started <= prov.finished
    assert {(r.attack, r.eps_label) for r in card.results} == {
        ("fgsm", "4/255"), ("fgsm", "16/255"), ("pgd", "4/255"), ("pgd", "16/255")}
    for r in card.results:
        assert r.n == 96
        lo, hi = r.robust_accuracy_ci
        assert lo <= r.robust_accuracy <= hi
        assert r.robust_accuracy <= r.clean_accuracy
        assert r.perturbation_max <= r.eps + 1e-6
        assert r.budget_violations == 0
        assert r.seconds > 0
    assert card.check("budget").status == "pass"
    assert (out / "samples.json").is_file()
    assert list((out / "examples").glob("*.npz"))


def test_robust_accuracy_is_recomputable_from_side_file(tiny_run: tuple[Scorecard, Path]) -> None:
    card, out = tiny_run
    samples = json.loads((out / "samples.json").read_text())
    for r in card.results:
        robust = samples["jobs"][r.job_id]["robust"]
        assert sum(robust) / len(robust) == pytest.approx(r.robust_accuracy)
        # robust means: clean-correct and still correct after the attack
        for i, ok in enumerate(robust):
            if ok:
                assert samples["clean_pred"]["none"][i] == samples["labels"][i]
                assert samples["jobs"][r.job_id]["adv_pred"][i] == samples["labels"][i]


def test_worst_case_is_per_sample_and(tiny_run: tuple[Scorecard, Path]) -> None:
    card, out = tiny_run
    samples = json.loads((out / "samples.json").read_text())
    for w in card.worst_case:
        rows = [r for r in card.results if r.eps == w.eps and r.defense == w.defense]
        per = [samples["jobs"][r.job_id]["robust"] for r in rows]
        both = [all(col) for col in zip(*per, strict=True)]
        assert w.robust_accuracy == pytest.approx(sum(both) / len(both))
        assert w.robust_accuracy <= min(r.robust_accuracy for r in rows)


def test_pgd_never_weaker_than_fgsm_and_monotone(tiny_run: tuple[Scorecard, Path]) -> None:
    card, _ = tiny_run
    for eps in (4 / 255, 16 / 255):
        assert card.row("pgd", eps).robust_accuracy <= card.row("fgsm", eps).robust_accuracy
    assert card.row("pgd", 16 / 255).robust_accuracy < card.row("pgd", 4 / 255).robust_accuracy
    assert card.check("monotonic_eps").status == "pass"


class _Cheater(Attack):
    """Returns a perturbation 10x over budget (and out of bounds): the runner must project it."""

    def run(self, model: Any, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Any, generator: Any = None) -> AttackResult:
        return AttackResult(x + 10 * threat.eps * torch.sign(torch.randn_like(x)) + 0.5)


@pytest.fixture
def cheater() -> Any:
    ATTACKS.add("test.cheater", _Cheater, "over-budget attack for tests")
    yield "test.cheater"
    ATTACKS.remove("test.cheater")


def test_runner_projects_over_budget_attacks(cheater: str, tmp_path: Path) -> None:
    s = tiny_scenario(attacks=[{"name": cheater, "eps": "8/255"}])
    card = arange.run(s, out=tmp_path, progress=False)
    (row,) = card.results
    assert row.perturbation_max <= 8 / 255 + 1e-6
    assert row.budget_violations == row.n_attacked > 0
    assert card.check("budget").status == "warn"
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert max(samples["jobs"][row.job_id]["perturbation"]) <= 8 / 255 + 1e-6


@pytest.mark.parametrize("norm,eps", [(Norm.linf, 8 / 255), (Norm.l2, 0.5)])
def test_enforce_projects_and_quantises(norm: Norm, eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 3, 8, 8, generator=g) * 255).round() / 255
    wild = x + torch.randn(x.shape, generator=g)
    wild[0, 0, 0, 0] = float("nan")
    for quantize in (False, True):
        out = enforce(x, wild, ThreatModel(norm, eps, quantize=quantize))
        assert bool(out.violations.all())
        assert bool((norms(out.x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
        assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
        if quantize:
            grid = out.x_adv * 255
            assert torch.allclose(grid, grid.round(), atol=1e-4)


def test_cascade_attacks_only_unbroken(tmp_path: Path) -> None:
    s = tiny_scenario(evaluation={"cascade": True})
    card = arange.run(s, out=tmp_path, progress=False)
    for eps in (4 / 255, 16 / 255):
        f, p = card.row("fgsm", eps), card.row("pgd", eps)
        assert f.cumulative and p.cumulative
        assert p.n_attacked == round(f.robust_accuracy * f.n)
        assert p.robust_accuracy <= f.robust_accuracy
    assert card.check("iterative_vs_single_step").status == "skip"


def test_resume_reuses_finished_jobs(tmp_path: Path, tiny_run: tuple[Scorecard, Path]) -> None:
    first, _ = tiny_run
    card1 = arange.run(tiny_scenario(), out=tmp_path, progress=False)
    assert card1.provenance.jobs_reused == 0
    jobs = sorted(p for p in (tmp_path / "jobs").glob("*.json") if "__check-" not in p.name)
    assert len(jobs) == len(card1.results) == 4  # (validity-check jobs are kept apart)
    jobs[1].unlink()
    jobs[2].write_text("{ torn")  # a torn write is re-run, not trusted
    untouched = {p: p.stat().st_mtime_ns for p in (jobs[0], jobs[3])}
    card2 = arange.run(tiny_scenario(), out=tmp_path, progress=False)
    assert card2.provenance.jobs_reused >= 2
    for p, mtime in untouched.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was re-run"
    assert jobs[1].is_file() and json.loads(jobs[2].read_text())["key"]
    strip = ("seconds",)
    for a, b, c in zip(card1.results, card2.results, first.results, strict=True):
        assert a.model_dump(exclude=set(strip)) == b.model_dump(exclude=set(strip))
        assert a.robust_accuracy == c.robust_accuracy  # same seed, same numbers


def test_changed_scenario_does_not_reuse_stale_jobs(tmp_path: Path) -> None:
    s = tiny_scenario(attacks=[{"name": "pgd", "eps": "8/255", "params": {"steps": 2}}],
                      evaluation={"checks": {"large_eps": False, "more_steps": False}})
    arange.run(s, out=tmp_path, progress=False)
    s["attacks"][0]["params"]["steps"] = 3
    card = arange.run(s, out=tmp_path, progress=False)
    assert card.provenance.jobs_reused == 0
    assert card.results[0].params["steps"] == 3


def test_train_mode_target_is_flagged_and_evaluated_in_eval_mode(tiny_model: Any) -> None:
    from arange.classification.checks import probe_model
    model, x, y = tiny_model
    checks = {c.name: c for c in probe_model(model.eval(), x[:16], y[:16], "none", True)}
    assert checks["train_mode"].status == "warn"
    assert checks["gradients"].status == "pass"
    assert checks["logits"].status == "pass"
    assert checks["randomness"].status == "pass"
