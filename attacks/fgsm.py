"""Fast gradient sign method (Goodfellow et al. 2015) and its L2 form (FGM)."""

from __future__ import annotations

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import ThreatModel, project

from .base import Attack, AttackResult, Objective, ascent_direction, check, random_in_ball


@register_attack("fgsm", description="Fast gradient sign method: one step of size eps "
                 "(L-inf sign / L2 normalised gradient), optional random start")
class FGSM(Attack):
    iterative = False

    def __init__(self, random_start: bool = False, rel_stepsize: float = 1.0):
        check("random_start", isinstance(random_start, bool), "must be true or false")
        check("rel_stepsize", 0 < rel_stepsize <= 2, f"must be in (0, 2] (got {rel_stepsize})")
        self.random_start = random_start
        self.rel_stepsize = float(rel_stepsize)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        x0 = random_in_ball(x, threat, generator) if self.random_start else x
        x0 = x0.detach().requires_grad_(True)
        loss = objective.loss(model(x0), y).sum()
        (grad,) = torch.autograd.grad(loss, x0)
        step = self.rel_stepsize * threat.eps
        x_adv = x0.detach() + step * ascent_direction(grad, threat.norm)
        return AttackResult(project(x, x_adv, threat))
