"""Defenses: each transform's contract, BPDA/EOT selection and gradients, and real runs showing
that adaptive rows expose masked gradients and that adversarial training beats no defense."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from arange.classification.runner import attack_entries, expand_jobs
from arange.core.scenario import scenario_from_dict
from arange.registry import DEFENSES

from .conftest import tiny_scenario

TRANSFORMS = ["jpeg", "bit_depth", "median", "tv", "random_resize_pad", "gaussian_noise"]
DETERMINISTIC = ["jpeg", "bit_depth", "median", "tv"]


def _batch(channels: int = 3, n: int = 4, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, size, size, generator=g)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("channels", [1, 3])
def test_transform_keeps_shape_dtype_and_bounds(name: str, channels: int) -> None:
    x = _batch(channels)
    y = DEFENSES.create(name).apply(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)  # every default setting changes a random image


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_transforms_repeat_exactly(name: str) -> None:
    t = DEFENSES.create(name)
    x = _batch()
    assert torch.equal(t.apply(x), t.apply(x))
    assert not t.randomized


@pytest.mark.parametrize("name", ["random_resize_pad", "gaussian_noise"])
def test_randomised_transforms_vary_but_follow_the_seed(name: str) -> None:
    t = DEFENSES.create(name)
    assert t.randomized and t.adaptive_method == "eot"
    x = _batch()
    torch.manual_seed(1)
    a = t.apply(x)
    b = t.apply(x)
    torch.manual_seed(1)
    assert not torch.equal(a, b)
    assert torch.equal(t.apply(x), a)


def test_bit_depth_rounds_to_the_levels() -> None:
    x = torch.tensor([0.0, 0.1, 0.49, 0.51, 0.9, 1.0]).view(1, 1, 1, 6)
    y = DEFENSES.create("bit_depth", bits=1).apply(x)
    assert y.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    y3 = DEFENSES.create("bit_depth", bits=3).apply(x)
    assert torch.allclose(y3 * 7, (y3 * 7).round(), atol=1e-6)


def test_jpeg_is_pillows_round_trip() -> None:
    x = _batch(3, n=2)
    y = DEFENSES.create("jpeg", quality=50).apply(x)
    arr = (x[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=50)
    ref = np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1) / 255.0
    assert np.allclose(y[1].numpy(), ref, atol=1e-6)


def test_median_of_a_hand_made_patch() -> None:
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 0, 6] = 1.0        # an isolated bright pixel disappears
    x[0, 0, 2:5, 2:5] = 1.0    # a 3x3 bright block loses its corners (4 of 9 bright)...
    y = DEFENSES.create("median", size=3).apply(x)[0, 0]
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1.0
    for r, c in ((2, 2), (2, 4), (4, 2), (4, 4)):
        expected[r, c] = 0.0   # ...and keeps its edges (6 of 9) and centre (9 of 9)
    assert torch.equal(y, expected)


def test_tv_lowers_total_variation() -> None:
    x = _batch(1, n=2, size=24)
    y = DEFENSES.create("tv", weight=0.2).apply(x)

    def tv(z: torch.Tensor) -> float:
        return float((z[..., 1:, :] - z[..., :-1, :]).abs().sum()
                     + (z[..., :, 1:] - z[..., :, :-1]).abs().sum())

    assert tv(y) < 0.5 * tv(x)


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3 * 16 * 16, 5, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def _input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), torch.zeros(len(x), dtype=torch.long)),
                               xg)
    return g


@pytest.mark.parametrize("name", ["jpeg", "bit_depth", "tv"])
def test_bpda_passes_the_gradient_straight_through(name: str) -> None:
    t, base, x = DEFENSES.create(name), _Linear(), _batch()
    naive, adaptive = t.wrap(base), t.adaptive(t.wrap(base))
    assert t.adaptive_method == "bpda" and adaptive is not None
    assert torch.equal(naive(x), adaptive(x))  # the same forward pass
    assert float(_input_grad(naive, x).abs().max()) == 0.0  # the true gradient is zero
    # BPDA: the model's gradient at the transformed input, as if the transform were identity
    assert torch.allclose(_input_grad(adaptive, x), _input_grad(base, t.apply(x)), atol=1e-6)


def test_eot_averages_the_draws() -> None:
    t, base, x = DEFENSES.create("gaussian_noise", sigma=0.2, eot_samples=4), _Linear(), _batch()
    adaptive = t.adaptive(t.wrap(base))
    torch.manual_seed(3)
    out = adaptive(x)
    torch.manual_seed(3)
    draws = torch.stack([base(t.apply(x)) for _ in range(4)])
    assert torch.allclose(out, draws.mean(0), atol=1e-5)


def test_differentiable_defenses_need_no_adaptive_view() -> None:
    for name in ("none", "median", "denoiser", "pgd_at", "fast_at"):
        assert DEFENSES.create(name).adaptive_method is None, name


def test_adaptive_twins_are_selected_by_the_declared_flags() -> None:
    s = scenario_from_dict(tiny_scenario(
        defenses=["none", "jpeg", "median", "random_resize_pad"],
        attacks=[{"name": "fgsm", "eps": ["8/255"]}, {"name": "noise", "eps": ["8/255"]},
                 {"suite": "standard", "eps": ["8/255"], "params": {"steps": 2}}]))
    labels = {d.key: [(a.key, m) for a, m in attack_entries(s, d)] for d in s.defenses}
    plain = [("fgsm", None), ("noise", None), ("standard", None)]
    assert labels["none"] == plain and labels["median"] == plain
    # no twin for the noise baseline: it uses no gradients
    assert labels["jpeg"] == plain + [("fgsm+bpda", "bpda"), ("standard+bpda", "bpda")]
    assert labels["random_resize_pad"] == plain + [("fgsm+eot", "eot"), ("standard+eot", "eot")]
    jobs = expand_jobs(s, "w", "d")
    assert len({j.key for j in jobs}) == len(jobs) and len({j.job_id for j in jobs}) == len(jobs)
    twins = [j for j in jobs if j.adaptive]
    assert {j.adapts for j in twins} == {"fgsm", "standard"}
    assert all(j.attack.key.startswith(f"{j.adapts}+") for j in twins)


def _rows(card: Any) -> dict[tuple[str, str, str], Any]:
    return {(r.defense, r.attack, r.eps_label): r for r in card.results}


def test_bpda_exposes_bit_depth_reduction(tmp_path: Path) -> None:
    import arange

    s = tiny_scenario(defenses=["none", {"name": "bit_depth", "params": {"bits": 3}}],
                      attacks=[{"name": "pgd", "eps": ["16/255"], "params": {"steps": 5}}],
                      evaluation={"checks": {"large_eps": False, "more_steps": False}})
    card = arange.run(s, out=tmp_path / "run", progress=False)
    rows = _rows(card)
    none, naive, bpda = (rows[("none", "pgd", "16/255")], rows[("bit_depth", "pgd", "16/255")],
                         rows[("bit_depth", "pgd+bpda", "16/255")])
    assert bpda.adaptive and bpda.adaptive_method == "bpda" and bpda.adapts == "pgd"
    assert not naive.adaptive
    # the naive number hides the attack; the adaptive one falls to near the undefended model's
    assert naive.robust_accuracy > bpda.robust_accuracy + 0.2
    assert bpda.robust_accuracy <= none.robust_accuracy + 0.15
    assert naive.unreliable and "pgd+bpda" in naive.unreliable and bpda.unreliable is None
    check = next(c for c in card.checks if c.name == "adaptive (bit_depth)")
    assert check.status == "fail"
    worst = next(w for w in card.worst_case if w.defense == "bit_depth")
    assert worst.robust_accuracy <= bpda.robust_accuracy  # the worst case counts the twin
    assert card.provenance.defenses["bit_depth"]["adaptive_method"] == "bpda"


def test_adversarial_training_beats_no_defense(tmp_path: Path) -> None:
    import arange

    s = tiny_scenario(defenses=["none", {"name": "fast_at", "params": {"eps": "16/255"}}],
                      attacks=[{"name": "pgd", "eps": ["16/255"], "params": {"steps": 5}}],
                      evaluation={"checks": {"large_eps": False, "more_steps": False}})
    card = arange.run(s, out=tmp_path / "run", progress=False)
    rows = _rows(card)
    none, at = rows[("none", "pgd", "16/255")], rows[("fast_at", "pgd", "16/255")]
    # four epochs of the tiny recipe: far from converged, but already clearly more robust
    assert at.robust_accuracy > none.robust_accuracy + 0.08
    assert not any(r.adaptive for r in card.results)  # adversarial training needs no BPDA/EOT
    info = card.provenance.defenses["fast_at"]
    assert info["train_seconds"] > 0 and info["weights"].startswith("zoo:")
    assert info["weights_sha256"] != card.provenance.weights_sha256
    # a second run reuses the cached hardened weights
    again = arange.run(s, out=tmp_path / "again", progress=False)
    assert again.provenance.defenses["fast_at"]["weights_sha256"] == info["weights_sha256"]
    assert _rows(again)[("fast_at", "pgd", "16/255")].robust_accuracy == at.robust_accuracy


def test_bf16_autocast_is_checked_against_fp32(tmp_path: Path) -> None:
    import arange

    s = tiny_scenario(attacks=[{"name": "pgd", "eps": ["8/255"], "params": {"steps": 5}}],
                      evaluation={"autocast": "bf16", "checks": {
                          "samples": 32, "large_eps": False, "more_steps": False}})
    card = arange.run(s, out=tmp_path / "bf16", progress=False)
    check = card.check("autocast")
    assert check.status in ("pass", "fail")
    d = check.details
    assert d["samples"] > 0 and 0 <= d["fp32_robust_accuracy"] <= 1
    assert (tmp_path / "bf16" / "jobs" / "none__check-fp32.pgd__linf-8_255.json").is_file()
    # the fp32 re-run is the same attack without autocast: its record differs from the bf16 job
    assert card.row("pgd", 8 / 255).budget_violations == 0
    assert card.provenance.scenario["evaluation"]["autocast"] == "bf16"
