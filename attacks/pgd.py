"""Projected gradient descent (Madry et al. 2018), L-inf and L2.

The step loop stays on the device: no ``.item()``, no boolean indexing, no host round trips.
Each iterate's success is read off the logits the step computes anyway, so the first successful
iterate of every sample is kept even if later steps wander off. Restarts attack only the samples
that are still unbroken.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import ThreatModel, project

from .base import Attack, AttackResult, Objective, ascent_direction, check, random_in_ball


@register_attack("pgd", description="Projected gradient descent (Madry et al.), L-inf or L2, "
                 "random start, restarts on still-robust samples")
class PGD(Attack):

    # any differentiable objective: misclassification, a hash surrogate, a forgery map
    tasks: ClassVar[tuple[str, ...]] = ("classification", "hash_matching", "forgery_localization")
    iterative = True
    test_params: ClassVar[dict[str, Any]] = {"steps": 3}

    def __init__(self, steps: int = 10, rel_stepsize: float = 0.25,
                 abs_stepsize: float | None = None, random_start: bool = True,
                 restarts: int = 1):
        check("steps", isinstance(steps, int) and 1 <= steps <= 100_000,
              f"must be an integer in [1, 100000] (got {steps!r})")
        check("rel_stepsize", 0 < rel_stepsize <= 2, f"must be in (0, 2] (got {rel_stepsize})")
        check("abs_stepsize", abs_stepsize is None or abs_stepsize > 0,
              f"must be > 0 (got {abs_stepsize})")
        check("random_start", isinstance(random_start, bool), "must be true or false")
        check("restarts", isinstance(restarts, int) and 1 <= restarts <= 1000,
              f"must be an integer in [1, 1000] (got {restarts!r})")
        self.steps = steps
        self.rel_stepsize = float(rel_stepsize)
        self.abs_stepsize = abs_stepsize
        self.random_start = random_start
        self.restarts = restarts

    def stepsize(self, eps: float) -> float:
        return float(self.abs_stepsize) if self.abs_stepsize is not None \
            else self.rel_stepsize * eps

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        best = x.detach().clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            if restart == 0:
                idx = None
                xs, ys = x, y
            else:
                idx = (~found).nonzero().squeeze(1)  # one sync per restart, not per step
                if idx.numel() == 0:
                    break
                xs, ys = x[idx], y[idx]
            adv, ok = self._one_run(model, xs, ys, threat, objective, generator)
            if idx is None:
                best, found = adv, ok
            else:
                best[idx] = adv
                found[idx] = ok
        return AttackResult(best)

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 objective: Objective, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.stepsize(threat.eps)
        x = x.detach()
        x_adv = random_in_ball(x, threat, generator) if self.random_start else x.clone()
        first = x_adv
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            loss = objective.loss(logits, y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach()
                newly = objective.success(logits, y) & ~found
                first = torch.where(newly.view(view), x_adv, first)
                found = found | newly
                x_adv = project(x, x_adv + alpha * ascent_direction(grad, threat.norm), threat)
        # Samples never seen to succeed keep the last iterate (the runner evaluates it).
        return torch.where(found.view(view), first, x_adv), found
