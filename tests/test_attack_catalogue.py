"""The attack catalogue: native APGD / FAB / Square, the ART and foolbox adapters, and the standard
suite run through the real runner on the tiny digits ResNet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import arange
from arange.attacks import Misclassification
from arange.attacks.apgd import checkpoints
from arange.attacks.fab import project_hyperplane_box
from arange.core.scenario import scenario_from_dict
from arange.errors import ScenarioError
from arange.registry import ATTACKS
from arange.threat import Norm, ThreatModel, enforce, norms

from .conftest import tiny_scenario

REQUIRED = ["fgsm", "pgd", "noise", "apgd", "fab", "square", "art.apgd", "art.autoattack",
            "art.carlini_l2", "art.deepfool", "art.square", "art.hopskipjump",
            "foolbox.linf_pgd", "foolbox.l2_pgd", "foolbox.fmn", "foolbox.boundary"]
BLACK_BOX = ["square", "art.square", "art.hopskipjump", "foolbox.boundary"]


def _scenario(**attack: Any) -> dict[str, Any]:
    return tiny_scenario(attacks=[{"eps": ["8/255"], **attack}])


def _load_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(raw, source="s.yaml")
    return str(e.value)


# ---------------------------------------------------------------------------- listing

def test_list_attacks_shows_native_and_adapter_attacks(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from arange.cli import main

    assert main(["list", "attacks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.strip()}
    for name in REQUIRED:
        assert name in lines, name
        description = lines[name].split(None, 1)[1]
        assert len(description) > 30, f"{name} needs a one-line description"
    for name in BLACK_BOX:
        assert "[black-box]" in lines[name]
    assert "[white-box]" in lines["art.apgd"]


def test_listing_does_not_import_the_wrapped_libraries() -> None:
    code = ("import sys; from arange.cli import main; main(['list', 'attacks']); "
            "assert 'art' not in sys.modules and 'foolbox' not in sys.modules, 'eager import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- validation

def test_adapter_parameter_names_come_from_the_wrapped_signature() -> None:
    msg = _load_error(_scenario(name="art.apgd", params={"max_iters": 10}))
    assert "s.yaml: attacks[0].params.max_iters" in msg
    assert "did you mean 'max_iter'" in msg
    assert "nb_random_init" in msg  # the accepted list is ART's own

    msg = _load_error(_scenario(name="foolbox.fmn", params={"step": 10}))
    assert "attacks[0].params.step" in msg and "did you mean 'steps'" in msg


def test_adapter_managed_arguments_are_not_the_users() -> None:
    # eps and norm come from the threat model, never from params
    msg = _load_error(_scenario(name="art.square", params={"eps": 0.3}))
    assert "attacks[0].params.eps" in msg
    msg = _load_error(_scenario(name="foolbox.boundary", norm="l2",
                                params={"init_attack": "x"}))
    assert "attacks[0].params.init_attack" in msg


def test_adapter_values_are_checked_by_the_library_at_load() -> None:
    msg = _load_error(_scenario(name="art.square", params={"p_init": 1.5}))
    assert "attacks[0].params.p_init" in msg and "ART rejects it" in msg
    msg = _load_error(_scenario(name="foolbox.linf_pgd", params={"steps": "ten"}))
    assert "attacks[0].params.steps: must be an integer" in msg
    msg = _load_error(_scenario(name="art.apgd", params={"loss_type": "hinge"}))
    assert "attacks[0].params.loss_type" in msg


def test_adapter_norms_are_checked_at_load() -> None:
    msg = _load_error(_scenario(name="art.carlini_l2", norm="linf"))
    assert "attacks[0].norm" in msg and "l2" in msg


def test_suite_entries_are_validated() -> None:
    msg = _load_error(_scenario(suite="standrad"))
    assert "attacks[0].suite" in msg and "did you mean 'standard'" in msg
    msg = _load_error(_scenario(suite="standard", params={"n_query": 10}))
    assert "attacks[0].params.n_query" in msg and "did you mean 'n_queries'" in msg
    msg = _load_error(_scenario(suite="standard", params={"components": ["apgd-ce", "pgd"]}))
    assert "attacks[0].params.components" in msg
    msg = _load_error(_scenario(suite="standard", name="pgd"))
    assert "attacks[0]" in msg and "not both" in msg
    msg = _load_error(tiny_scenario(attacks=[{"eps": ["8/255"]}]))
    assert "attacks[0]" in msg and "suite" in msg


# ---------------------------------------------------------------------------- native attacks

def test_apgd_checkpoints_follow_the_paper() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_hyperplane_projection_is_feasible_and_minimal() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 64, 20
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    c = torch.randn(n, generator=gen, dtype=torch.float64)
    lower, upper = -x, 1 - x
    for norm in (Norm.linf, Norm.l2):
        delta = project_hyperplane_box(w, c, lower, upper, norm)
        assert bool((delta >= lower - 1e-9).all() and (delta <= upper + 1e-9).all())
        reach = (w * torch.where(w * c[:, None] > 0, upper, lower)).sum(1)  # best in the box
        feasible = reach.abs() >= c.abs()
        assert bool(torch.allclose((w * delta).sum(1)[feasible], c[feasible], atol=1e-6))
        # no random feasible point of the box on the hyperplane is smaller
        for _ in range(20):
            r = lower + (upper - lower) * torch.rand(n, d, generator=gen, dtype=torch.float64)
            s = (w * r).sum(1)
            ok = feasible & (s * c > 0) & (s.abs() >= c.abs())
            scaled = r * (c / s)[:, None]  # on the hyperplane, still in the box (scale <= 1)
            assert bool((norms(delta, norm)[ok] <= norms(scaled, norm)[ok] + 1e-6).all())


def _attack(model: Any, name: str, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float,
            **params: Any) -> tuple[float, Any]:
    """Run ``name`` the way the runner does and return (success rate, result)."""
    attack = ATTACKS.create(name, **params)
    threat = ThreatModel(norm, eps)
    result = attack.run(model, x, y, threat, Misclassification(), torch.Generator().manual_seed(0))
    enf = enforce(x, result.x_adv, threat)
    assert int(enf.violations.sum()) == 0, f"{name} proposed examples outside the budget"
    with torch.no_grad():
        success = float((model(enf.x_adv).argmax(1) != y).float().mean())
    return success, result


class Saturated(torch.nn.Module):
    """Logits times 1e4: softmax saturates, so cross-entropy gradients vanish."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


def _correct(model: Any, x: torch.Tensor, y: torch.Tensor, n: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def test_apgd_dlr_sees_through_saturated_logits(tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 24)
    masked = Saturated(model).eval()
    ce, _ = _attack(masked, "apgd", xb, yb, Norm.linf, 8 / 255, steps=10, loss="ce",
                    random_start=False)
    pgd, _ = _attack(masked, "pgd", xb, yb, Norm.linf, 8 / 255, steps=10, random_start=False)
    dlr, _ = _attack(masked, "apgd", xb, yb, Norm.linf, 8 / 255, steps=10, loss="dlr",
                     random_start=False)
    clear, _ = _attack(model, "apgd", xb, yb, Norm.linf, 8 / 255, steps=10, loss="dlr",
                       random_start=False)
    assert ce < 0.2 and pgd < 0.2, "cross-entropy gradients should vanish on saturated logits"
    assert dlr > ce + 0.3, "DLR is scale invariant and must still find adversarial examples"
    assert abs(dlr - clear) <= 2 / len(yb)


def test_native_square_reports_queries_and_breaks_samples(tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 12)
    success, result = _attack(model, "square", xb, yb, Norm.linf, 32 / 255, n_queries=60)
    assert success > 0.5
    q = result.queries
    assert q is not None and q.shape == (len(yb),)
    assert bool((q >= 1).all() and (q <= 60).all())


def test_native_l2_square_matches_the_reference_square(tiny_model: Any) -> None:
    """The L2 Square against Croce & Hein's own SquareAttack (pyautoattack): the same update
    pattern, and no weaker at the same query budget on the same samples."""
    square = pytest.importorskip("pyautoattack.square")
    from arange.attacks.square import l2_pattern
    from arange.stats import mcnemar_exact_one_sided

    ref = square.SquareAttack(lambda t: t, norm="L2", eps=1.0, device="cpu")
    for s in (1, 3, 4, 7, 12):
        theirs = ref.eta(s)  # transposed at random
        ours = l2_pattern(s)
        assert min(float((theirs - ours).abs().max()), float((theirs - ours.T).abs().max())) < 1e-6

    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 60)
    eps, nq = 0.5, 100
    _, result = _attack(model, "square", xb, yb, Norm.l2, eps, n_queries=nq)
    q = result.queries
    assert q is not None and bool((q >= 1).all() and (q <= nq).all())
    assert float(norms(result.x_adv - xb, Norm.l2).max()) <= eps * (1 + 1e-5)
    with torch.no_grad():
        ours_broke = model(result.x_adv).argmax(1) != yb
        attack = square.SquareAttack(model, norm="L2", eps=eps, n_queries=nq, p_init=0.8,
                                     n_restarts=1, seed=0, device="cpu")
        theirs_broke = model(attack.perturb(xb, yb)).argmax(1) != yb
    assert int(ours_broke.sum()) > 0
    only_theirs = int((theirs_broke & ~ours_broke).sum())
    only_ours = int((ours_broke & ~theirs_broke).sum())
    # fail only when the reference breaks significantly more (one-sided exact McNemar)
    assert mcnemar_exact_one_sided(only_theirs, only_ours) > 0.05, \
        (int(ours_broke.sum()), int(theirs_broke.sum()), only_ours, only_theirs)


def test_fab_finds_small_adversarial_examples(tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 12)
    fab, _ = _attack(model, "fab", xb, yb, Norm.l2, 1.0, steps=10, targeted=True,
                     n_target_classes=2)
    fgsm, _ = _attack(model, "fgsm", xb, yb, Norm.l2, 1.0)
    assert fab >= fgsm and fab > 0.5


# ---------------------------------------------------------------------------- adapters

ADAPTER_CASES = [
    ("art.fgsm", Norm.linf, 16 / 255, {}),
    ("art.pgd", Norm.linf, 16 / 255, {"max_iter": 5}),
    ("art.apgd", Norm.l2, 1.0, {"max_iter": 5, "nb_random_init": 1,
                                "loss_type": "difference_logits_ratio"}),
    ("art.autoattack", Norm.linf, 16 / 255, {"max_iter": 5, "nb_random_init": 1,
                                             "deepfool_max_iter": 3, "square_max_iter": 10,
                                             "square_restarts": 1}),
    ("art.carlini_l2", Norm.l2, 2.0, {"max_iter": 5, "binary_search_steps": 1,
                                      "initial_const": 10.0, "learning_rate": 0.1,
                                      "max_halving": 2, "max_doubling": 2}),
    ("art.deepfool", Norm.l2, 2.0, {"max_iter": 5}),
    ("art.square", Norm.linf, 32 / 255, {"max_iter": 40}),
    ("art.hopskipjump", Norm.l2, 3.0, {"max_iter": 2, "max_eval": 50, "init_eval": 10,
                                       "init_size": 20}),
    ("foolbox.fgsm", Norm.linf, 16 / 255, {}),
    ("foolbox.linf_pgd", Norm.linf, 16 / 255, {"steps": 5, "rel_stepsize": 0.25}),
    ("foolbox.l2_pgd", Norm.l2, 1.0, {"steps": 5, "rel_stepsize": 0.25}),
    ("foolbox.fmn", Norm.linf, 16 / 255, {"steps": 10}),
    ("foolbox.boundary", Norm.l2, 3.0, {"steps": 50}),
]


@pytest.mark.parametrize(("name", "norm", "eps", "params"), ADAPTER_CASES,
                         ids=[c[0] for c in ADAPTER_CASES])
def test_adapter_attacks_for_real(name: str, norm: Norm, eps: float, params: dict[str, Any],
                                  tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 6)
    success, result = _attack(model, name, xb, yb, norm, eps, **params)
    assert success > 0, f"{name} broke none of {len(yb)} samples at eps {eps:.3g}"
    assert result.x_adv.device == xb.device and result.x_adv.dtype == xb.dtype
    if name in BLACK_BOX:
        assert result.queries is not None and float(result.queries.min()) > 0
    else:
        assert result.queries is None


def test_adapter_is_deterministic_given_the_runner_seed(tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = _correct(model, x, y, 6)
    runs = [_attack(model, "art.square", xb, yb, Norm.linf, 16 / 255, max_iter=15)[1].x_adv
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------------------- the suite

SUITE_PARAMS = {"steps": 10, "fab_steps": 5, "n_queries": 40, "n_target_classes": 2}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    s = tiny_scenario(
        attacks=[
            {"name": "pgd", "eps": ["4/255", "8/255"], "params": {"steps": 10}},
            {"suite": "standard", "eps": ["4/255", "8/255"], "params": SUITE_PARAMS},
            {"name": "art.apgd", "eps": ["8/255"], "params": {"max_iter": 5,
                                                               "nb_random_init": 1}},
            {"name": "art.square", "eps": ["8/255"], "params": {"max_iter": 20}},
        ],
        evaluation={"checks": {"samples": 32, "large_eps": {"steps": 5},
                               "more_steps": False}})
    s["target"]["samples"] = 40
    out = tmp_path_factory.mktemp("suite-run")
    return arange.run(s, out=out, progress=False), out


def test_suite_reports_each_component_and_the_whole(suite_run: tuple[Any, Path]) -> None:
    card, _ = suite_run
    for eps in (4 / 255, 8 / 255):
        comps = [card.row(f"standard/{c}", eps) for c in ("apgd-ce", "apgd-t", "fab-t",
                                                          "square")]
        whole = card.row("standard", eps)
        assert all(r.cumulative for r in comps) and not whole.cumulative
        assert [r.attack_name for r in comps] == ["apgd", "apgd", "fab", "square"]
        assert whole.attack_name == "suite:standard" and whole.kind == "white-box"
        # a cascade over still-robust samples: each component attacks what is left
        acc = [r.robust_accuracy for r in comps]
        assert acc == sorted(acc, reverse=True)
        assert [r.n_attacked for r in comps[1:]] == [round(a * r.n) for a, r in
                                                     zip(acc[:-1], comps[:-1], strict=True)]
        assert whole.robust_accuracy == acc[-1]
        assert whole.n_attacked == comps[0].n_attacked
        assert whole.params["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        # Square is black-box: it reports queries whenever it had samples left to attack
        assert comps[-1].queries_mean is not None or comps[-1].n_attacked == 0
        for r in [*comps, whole]:
            assert r.perturbation_max <= eps * (1 + 1e-5) and r.budget_violations == 0


def test_suite_is_no_weaker_than_pgd_at_every_eps(suite_run: tuple[Any, Path]) -> None:
    card, _ = suite_run
    for eps in (4 / 255, 8 / 255):
        # With the trimmed test budgets (10 APGD steps, 2 target classes) a single sample may
        # fall either way; the validity checks allow the same one-sample tolerance.
        suite, pgd = card.row("standard", eps), card.row("pgd", eps)
        assert suite.robust_accuracy <= pgd.robust_accuracy + 1 / suite.n + 1e-9
        worst = next(w for w in card.worst_case if abs(w.eps - eps) < 1e-9)
        assert worst.robust_accuracy <= card.row("standard", eps).robust_accuracy
        assert "standard/square" in worst.attacks


def test_adapters_go_through_the_runner_like_native_attacks(suite_run: tuple[Any, Path]
                                                            ) -> None:
    card, out = suite_run
    apgd, square = card.row("art.apgd", 8 / 255), card.row("art.square", 8 / 255)
    assert apgd.kind == "white-box" and apgd.queries_mean is None
    assert square.kind == "black-box" and square.queries_mean is not None
    assert square.queries_mean > 0
    assert apgd.params["max_iter"] == 5 and apgd.params["loss_type"] == "cross_entropy"
    assert card.check("budget").status == "pass"
    assert card.check("large_eps").status == "pass"
    assert card.check("more_steps").status == "skip"
    samples = json.loads((out / "samples.json").read_text())
    assert "none__standard__linf-8_255" in samples["jobs"]
    assert "none__standard_apgd-ce__linf-8_255" in samples["jobs"]
    assert (out / "jobs" / "none__check-large-eps__linf-0.5.json").is_file()


def test_suite_run_resumes_without_recomputing(suite_run: tuple[Any, Path]) -> None:
    card, out = suite_run
    s = scenario_from_dict(card.provenance.scenario)
    again = arange.run(s, out=out, progress=False)
    # every job is reused: the scenario's (suite rows are not jobs) and the large-eps check's
    assert again.provenance.jobs_reused == len(card.results) - 2 + 1
    assert [r.robust_accuracy for r in again.results] == \
        [r.robust_accuracy for r in card.results]
    assert [c.status for c in again.checks] == [c.status for c in card.checks]


def test_autoattack_scenario_loads() -> None:
    from arange.core.scenario import load_scenario

    root = Path(__file__).resolve().parent.parent
    s = load_scenario(root / "scenarios" / "autoattack_resnet.yaml")
    assert any(a.suite == "standard" for a in s.attacks)
    assert any(a.name == "pgd" for a in s.attacks)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ARANGE_RUN_SLOW"),
                    reason="about 10 minutes on a 2-core CPU; set ARANGE_RUN_SLOW=1")
def test_autoattack_scenario_on_the_digits_resnet(tmp_path: Path) -> None:
    """The shipped scenario: the suite is no weaker than PGD at every eps."""
    root = Path(__file__).resolve().parent.parent
    card = arange.run(root / "scenarios" / "autoattack_resnet.yaml", out=tmp_path,
                      progress=False, device="cpu")
    suite = {r.eps: r.robust_accuracy for r in card.results if r.attack == "standard"}
    pgd = {r.eps: r.robust_accuracy for r in card.results if r.attack == "pgd"}
    assert suite and set(suite) <= set(pgd)
    for eps, acc in suite.items():
        assert acc <= pgd[eps]
    assert all(c.status != "fail" for c in card.checks), [c for c in card.checks]
