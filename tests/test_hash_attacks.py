"""Each hash attack on a few tiny images, checked by the reference library."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from arange.attacks.nes import HashNES, activity_mask
from arange.attacks.pgd import PGD
from arange.hashing.attacks import (
    ExactHash,
    HammingObjective,
    SurrogateObjective,
    SurrogateWithExact,
)
from arange.hashing.data import load_images
from arange.hashing.reference import hamming, reference_bits_batch
from arange.registry import ATTACKS
from arange.threat import Norm, ThreatModel, enforce, quantized


@pytest.fixture(scope="module")
def tiny() -> tuple[np.ndarray, torch.Tensor]:
    data = load_images("embedded", image_size=64)
    pick = [0, 7, 20, 40]  # distinct photographs
    return np.asarray(data.images)[pick], data.tensor()[pick]


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("norm,eps", [(Norm.linf, 8 / 255), (Norm.linf, 0.03), (Norm.l2, 0.5)])
def test_quantized_is_on_the_grid_inside_the_ball_and_a_fixed_point(norm: Norm,
                                                                    eps: float) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float() / 255
    x_adv = x + torch.randn(x.shape, generator=g) * 0.05
    threat = ThreatModel(norm, eps, quantize=True)
    q = quantized(x, x_adv.clamp(0, 1) if norm is Norm.linf else
                  enforce(x, x_adv, ThreatModel(norm, eps)).x_adv, threat)
    assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4)
    d = (q - x).flatten(1)
    n = d.abs().amax(1) if norm is Norm.linf else d.norm(dim=1)
    assert bool((n <= eps + 1e-6).all())
    e = enforce(x, q, threat)
    assert not bool(e.violations.any())
    assert torch.allclose(e.x_adv, q, atol=1e-6)


def test_hamming_objective() -> None:
    a = torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 1]])
    t = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    ev = HammingObjective("evasion", threshold=2)
    assert ev.loss(a, t).tolist() == [0.0, 3.0]
    assert ev.success(a, t).tolist() == [False, True]
    co = HammingObjective("collision", threshold=2)
    assert co.success(a, t).tolist() == [True, False]
    assert HammingObjective("evasion", 2, margin=1).success(a, t).tolist() == [False, False]
    with pytest.raises(ValueError):
        HammingObjective("swap", 2)  # type: ignore[arg-type]


def test_one_registry_serves_every_range(tmp_path: Any) -> None:
    """The hash range takes its attacks from the one attack registry: the classifier's PGD
    (any differentiable objective) and NES (hash matching only); each attack declares the
    ranges it serves and a scenario of another range cannot name it."""
    from arange.cli import main

    assert ATTACKS.get("pgd") is PGD and ATTACKS.get("nes") is HashNES
    assert HashNES.kind == "black-box" and HashNES.tasks == ("hash_matching",)
    assert set(PGD.tasks) == {"classification", "hash_matching", "forgery_localization"}
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\ntarget: {model: resnet20, weights: random, dataset: {name: digits}}"
                   "\nattacks: [{name: nes, eps: [8/255]}]\n")
    assert main(["validate", str(bad)]) == 2


def test_nes_evades_phash_on_tiny_images(tiny: tuple[np.ndarray, torch.Tensor]) -> None:
    images, x = tiny
    model = ExactHash("phash")
    y = model(x)
    threat = ThreatModel(Norm.linf, 32 / 255, quantize=True)
    attack = HashNES(max_queries=400)
    res = attack.run(model, x, y, threat, HammingObjective("evasion", 6),
                     torch.Generator().manual_seed(0))
    assert res.queries is not None and int(res.queries.max()) <= 400
    e = enforce(x, res.x_adv, threat)
    assert not bool(e.violations.any()) and torch.allclose(e.x_adv, res.x_adv, atol=1e-6)
    d = hamming(reference_bits_batch("phash", images), reference_bits_batch("phash",
                                                                            _uint8(res.x_adv)))
    assert (d > 6).sum() >= 3, d


def test_nes_keeps_a_small_query_budget_and_is_deterministic(
        tiny: tuple[np.ndarray, torch.Tensor]) -> None:
    _, x = tiny
    model = ExactHash("pdq")
    y = model(x)
    threat = ThreatModel(Norm.l2, 1.0, quantize=True)
    runs = [HashNES(max_queries=25, samples=3, resolution=4).run(
        model, x, y, threat, HammingObjective("evasion", 60),
        torch.Generator().manual_seed(3)) for _ in range(2)]
    for r in runs:
        assert r.queries is not None and int(r.queries.max()) <= 25
        assert bool(((r.x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all())
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].queries, runs[1].queries)


@pytest.fixture(scope="module")
def reachable(tiny: tuple[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Collision targets known to be reachable: the pHash bits of evading images found by NES
    within 16/255 (each differs from its original's hash by more than 8 bits)."""
    _, x = tiny
    model = ExactHash("phash")
    threat = ThreatModel(Norm.linf, 16 / 255, quantize=True)
    res = HashNES(max_queries=600).run(model, x, model(x), threat,
                                       HammingObjective("evasion", 8),
                                       torch.Generator().manual_seed(5))
    return model(res.x_adv)


def test_nes_collision_reaches_a_chosen_hash(tiny: tuple[np.ndarray, torch.Tensor],
                                             reachable: torch.Tensor) -> None:
    _, x = tiny
    model = ExactHash("phash")
    start = (model(x) != reachable).sum(1)
    assert int((start > 8).sum()) >= 3
    threat = ThreatModel(Norm.linf, 32 / 255, quantize=True)
    res = HashNES(max_queries=800).run(model, x, reachable, threat,
                                       HammingObjective("collision", 4),
                                       torch.Generator().manual_seed(0))
    d = (model(res.x_adv) != reachable).sum(1)
    assert int(((d <= 4) & (start > 8)).sum()) >= 2, (start, d)


@pytest.mark.parametrize("goal", ["evasion", "collision"])
def test_pgd_through_the_surrogate(goal: str, tiny: tuple[np.ndarray, torch.Tensor],
                                   reachable: torch.Tensor) -> None:
    images, x = tiny
    y = ExactHash("phash")(x) if goal == "evasion" else reachable
    threat = ThreatModel(Norm.linf, 16 / 255, quantize=True)
    attack = PGD(steps=40, rel_stepsize=1 / 16, random_start=False)
    adv = attack.run(SurrogateWithExact("phash"), x, y, threat,
                     SurrogateObjective(goal, 6),  # type: ignore[arg-type]
                     torch.Generator().manual_seed(0)).x_adv
    adv = quantized(x, enforce(x, adv, ThreatModel(Norm.linf, 16 / 255)).x_adv, threat)
    bits = reference_bits_batch("phash", _uint8(adv))
    if goal == "evasion":
        ok = hamming(reference_bits_batch("phash", images), bits) > 6
    else:
        ok = hamming(y.numpy().astype(bool), bits) <= 6
    assert ok.sum() >= 3, ok


def test_activity_mask_is_low_on_flat_regions() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    x[:, :, :, 16:] = torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    m = activity_mask(x)
    assert m.shape == (1, 1, 32, 32)
    assert float(m[..., :8].max()) < 0.1 < float(m[..., 24:].min())


def test_nes_rejects_bad_parameters() -> None:
    from arange.errors import ParamError
    with pytest.raises(ParamError, match="max_queries"):
        HashNES(max_queries=0)
    with pytest.raises(ParamError, match="resolution"):
        HashNES(resolution=1)
