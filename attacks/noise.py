"""Random noise inside the budget: the baseline every real attack must beat."""

from __future__ import annotations

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import Norm, ThreatModel

from .base import Attack, AttackResult, Objective, check, random_in_ball


@register_attack("noise", description="Uniform random noise in the eps-ball (a baseline, not "
                 "an attack; white-box attacks must do better)")
class UniformNoise(Attack):
    kind = "noise"

    def __init__(self, samples: int = 1):
        check("samples", isinstance(samples, int) and 1 <= samples <= 1000,
              f"must be an integer in [1, 1000] (got {samples!r})")
        self.samples = samples

    @torch.no_grad()
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        best: torch.Tensor | None = None
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.samples):
            cand = random_in_ball(x, threat, generator)
            if threat.norm is Norm.l2:  # on the sphere: the strongest random point
                d = cand - x
                n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
                cand = (x + d * (threat.eps / n)).clamp(*threat.bounds)
            ok = objective.success(model(cand), y) & ~found
            # keep the first successful draw; unbroken samples keep the first draw
            best = cand if best is None else torch.where(ok.view(view), cand, best)
            found |= ok
        assert best is not None  # samples >= 1 is checked at construction
        return AttackResult(best, queries=torch.full((x.shape[0],), self.samples,
                                                     device=x.device))
