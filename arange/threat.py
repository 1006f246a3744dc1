"""Threat models and the budget enforcement the runner applies to every attack's output.

An attack proposes adversarial examples; :func:`enforce` decides what is actually evaluated:
the perturbation is projected onto the eps-ball, the image clamped to the bounds and, when the task
evaluates 8-bit images, moved onto the 8-bit grid by the one rule of :func:`levels_in_ball` (the
nearest level inside the ball, so quantisation can never leave it). An attack that returns an
oversized perturbation therefore can never inflate a score; the number of samples that needed
projection is reported so a buggy attack is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arange.core.norms import Norm

__all__ = ["Enforced", "Norm", "ThreatModel", "enforce", "levels_in_ball", "norms", "project",
           "quantized"]


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    quantize: bool = False  # evaluate images on the uint8 grid (bounds (0, 1))

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm(self.norm))
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0 (got {self.eps})")
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"bounds must be increasing (got {self.bounds})")
        if self.quantize and tuple(self.bounds) != (0.0, 1.0):
            raise ValueError(f"8-bit images need bounds (0, 1) (got {self.bounds})")


def norms(delta: torch.Tensor, norm: Norm | str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations."""
    flat = delta.flatten(1)
    if Norm(norm) is Norm.linf:
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` and into the bounds."""
    delta = x_adv - x
    if threat.norm is Norm.linf:
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        n = norms(delta, Norm.l2).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(threat.eps / (n + 1e-12), max=1.0)
    # Clamping towards the bounds only shrinks each coordinate of delta (x is inside the bounds),
    # so the result stays inside the ball for both norms.
    return (x + delta).clamp(*threat.bounds)


@dataclass
class Enforced:
    x_adv: torch.Tensor        # what gets evaluated
    violations: torch.Tensor   # bool per sample: the attack's raw output broke the budget/bounds
    perturbation: torch.Tensor  # per-sample norm (threat norm) of the evaluated perturbation


def enforce(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> Enforced:
    """The runner's check on an attack's output; see the module docstring."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype)
    bad = ~torch.isfinite(x_adv).flatten(1).all(dim=1)
    x_adv = torch.where(torch.isfinite(x_adv), x_adv, x)
    lo, hi = threat.bounds
    raw = norms(x_adv - x, threat.norm)
    tol = 1e-6 + 1e-5 * threat.eps
    out_of_bounds = ((x_adv < lo - 1e-6) | (x_adv > hi + 1e-6)).flatten(1).any(dim=1)
    violations = bad | out_of_bounds | (raw > threat.eps + tol)
    xp = project(x, x_adv, threat)
    if threat.quantize:
        xp = quantized(x, xp, threat)
    return Enforced(xp, violations, norms(xp - x, threat.norm))


# ---------------------------------------------------------------------------- 8-bit levels

def levels_in_ball(x255: torch.Tensor, d255: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """8-bit levels of ``x + d`` inside the threat model: each pixel moves to the nearest level
    of the clamped image, clipped to the largest whole level inside an L-inf ball; for an L2
    ball, an image whose rounded perturbation would leave the ball is truncated towards the
    clean image instead. ``x255``: the clean image's levels; ``d255``: the perturbation in
    levels (float). Bounds are [0, 1] (levels [0, 255])."""
    r = torch.clamp(x255 + d255, 0.0, 255.0)
    if threat.norm is Norm.linf:
        k = float(int(threat.eps * 255.0 + 1e-6))
        return r.round_().sub_(x255).clamp_(-k, k).add_(x255)
    dq = torch.round(r) - x255
    over = dq.flatten(1).norm(dim=1) / 255.0 > threat.eps
    if bool(over.any()):
        t = torch.trunc((r[over] - x255[over]) * (1 - 1e-6))
        n = t.flatten(1).norm(dim=1) / 255.0
        while bool((n > threat.eps).any()):  # only when d itself leaves the ball
            bad = n > threat.eps
            tb = t[bad]
            peak = tb.abs().amax(dim=(1, 2, 3), keepdim=True)
            t[bad] = tb - torch.sign(tb) * (tb.abs() >= peak).to(tb.dtype)
            n = t.flatten(1).norm(dim=1) / 255.0
        dq[over] = t
    return dq.add_(x255)


def quantized(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """``x_adv`` moved onto the 8-bit grid inside the threat model (see
    :func:`levels_in_ball`): the quantisation step of :func:`enforce`. ``x`` must be on the
    grid and the bounds [0, 1]; the result is a fixed point of :func:`enforce`."""
    if tuple(threat.bounds) != (0.0, 1.0):
        raise ValueError(f"8-bit images need bounds (0, 1) (got {threat.bounds})")
    x255 = torch.round(x * 255.0)
    return levels_in_ball(x255, (x_adv - x) * 255.0, threat) / 255.0
