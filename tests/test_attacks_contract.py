"""Contract tests run on every registered attack (timm/foolbox style): whatever an attack does,
its output has the input's shape, dtype and device, stays in the bounds, and after the runner's
enforcement stays inside the budget. Attacks may declare cheap settings for these tests with a
``test_params`` class attribute."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from arange.attacks import Misclassification
from arange.registry import ATTACKS
from arange.threat import Norm, ThreatModel, enforce, norms

# the classifier contract, for every attack that serves classification (the hash range's NES
# has its own tests in test_hash_attacks.py)
NAMES = [n for n in ATTACKS.names() if "classification" in ATTACKS.get(n).tasks]


def _make(name: str) -> Any:
    cls = ATTACKS.get(name)
    return ATTACKS.create(name, **dict(getattr(cls, "test_params", {})))


@pytest.mark.parametrize("norm", [Norm.linf, Norm.l2])
@pytest.mark.parametrize("name", NAMES)
def test_attack_contract(name: str, norm: Norm, tiny_model: Any) -> None:
    model, x, y = tiny_model
    attack = _make(name)
    if norm not in attack.norms:
        pytest.skip(f"{name} does not support {norm.value}")
    xb, yb = x[:8].clone(), y[:8].clone()
    eps = 8 / 255 if norm is Norm.linf else 0.5
    threat = ThreatModel(norm, eps)
    gen = torch.Generator().manual_seed(0)
    before = xb.clone()
    result = attack.run(model, xb, yb, threat, Misclassification(), gen)
    adv = result.x_adv
    assert torch.equal(xb, before), "attacks must not modify their input in place"
    assert adv.shape == xb.shape and adv.dtype == xb.dtype and adv.device == xb.device
    assert bool(torch.isfinite(adv).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    enforced = enforce(xb, adv, threat)
    assert bool((norms(enforced.x_adv - xb, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    # A native attack's raw output should already respect its budget.
    assert int(enforced.violations.sum()) == 0
    if attack.kind != "white-box":
        assert result.queries is not None and result.queries.shape == (8,)
    assert isinstance(attack.params(), dict)
    desc = ATTACKS.describe(name)
    assert desc and "\n" not in desc


@pytest.mark.parametrize("name", NAMES)
def test_attack_call_api_on_user_module(name: str, tiny_model: Any) -> None:
    """Direct use on a user's nn.Module: the budget is enforced and the model is untouched."""
    model, x, y = tiny_model
    attack = _make(name)
    params_before = [p.requires_grad for p in model.parameters()]
    norm = attack.norms[0]  # some attacks (C&W, L2 PGD, boundary) are L2-only
    eps = 4 / 255 if norm is Norm.linf else 0.5
    model.train()
    adv = attack(model, x[:4], y[:4], eps=eps, norm=norm, seed=0)
    assert model.training, "the caller's train/eval mode is restored"
    model.eval()
    assert [p.requires_grad for p in model.parameters()] == params_before
    assert float(norms(adv - x[:4], norm).max()) <= eps * (1 + 1e-5) + 1e-6


def test_pgd_beats_fgsm_and_noise(tiny_model: Any) -> None:
    model, x, y = tiny_model
    xb, yb = x[:64], y[:64]
    rates = {}
    for name, params in [("noise", {}), ("fgsm", {}), ("pgd", {"steps": 10})]:
        adv = ATTACKS.create(name, **params)(model, xb, yb, eps=16 / 255, seed=0)
        with torch.no_grad():
            rates[name] = float((model(adv).argmax(1) != yb).float().mean())
    assert rates["pgd"] >= rates["fgsm"] >= rates["noise"]
    assert rates["pgd"] > 0.3


def test_pgd_step_loop_uses_no_parameter_gradients(tiny_model: Any) -> None:
    model, x, y = tiny_model
    seen = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        seen.append(any(p.requires_grad for p in model.parameters()))

    handle = model.register_forward_hook(hook)
    try:
        ATTACKS.create("pgd", steps=3)(model, x[:4], y[:4], eps=8 / 255)
    finally:
        handle.remove()
    assert seen and not any(seen)
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_restarts_only_attack_unbroken(tiny_model: Any) -> None:
    model, x, y = tiny_model
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        ATTACKS.create("pgd", steps=2, restarts=3)(model, x[:32], y[:32], eps=16 / 255, seed=0)
    finally:
        handle.remove()
    # first restart sees all 32; later restarts see only the samples still unbroken
    assert sizes[0] == 32 and sizes[-1] < 32


def test_l2_pgd_stays_in_ball(tiny_model: Any) -> None:
    model, x, y = tiny_model
    adv = ATTACKS.create("pgd", steps=5)(model, x[:8], y[:8], eps=0.5, norm="l2", seed=1)
    assert float((adv - x[:8]).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
