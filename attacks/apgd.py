"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), L-inf and L2, in torch.

PGD with momentum whose step size needs no tuning: it starts at ``2 * eps`` and is halved at
checkpoints (at fractions 0, 0.22, 0.41, 0.57, ... of the budget) for the samples where too few
steps increased the loss since the last checkpoint, or where neither the step size nor the best
loss changed; halving restarts the sample from its best point so far.

Losses: ``ce`` (the task's cross-entropy), ``dlr`` (difference of logits ratio, invariant to logit
scaling) and ``dlr-targeted`` (APGD-T: one run per likely wrong class, each on the samples still
unbroken). The step loop stays on the device: per-sample step sizes, counters and checkpoint
decisions are tensors. The only host syncs are one per checkpoint, where samples already broken
are dropped from the loop, and one per restart or target class.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import ThreatModel, project

from .base import Attack, AttackResult, Objective, ascent_direction, check, random_in_ball
from .losses import dlr, dlr_targeted, ranked_targets

LOSSES = ("ce", "dlr", "dlr-targeted")


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD decides whether to halve the step size."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    its = (math.ceil(round(q * steps, 6)) for q in p[1:])  # round: 0.57 * 100 is 57.0000...1
    return sorted({i for i in its if 0 < i < steps})


@register_attack("apgd", description="Auto-PGD (Croce & Hein): step-size-free PGD with momentum; "
                 "loss ce, dlr or dlr-targeted (APGD-T), L-inf or L2")
class APGD(Attack):
    iterative = True
    test_params: ClassVar[dict[str, Any]] = {"steps": 8, "n_target_classes": 2}

    def __init__(self, steps: int = 100, restarts: int = 1, loss: str = "ce",
                 n_target_classes: int = 9, rho: float = 0.75, random_start: bool = True):
        check("steps", isinstance(steps, int) and 1 <= steps <= 100_000,
              f"must be an integer in [1, 100000] (got {steps!r})")
        check("restarts", isinstance(restarts, int) and 1 <= restarts <= 1000,
              f"must be an integer in [1, 1000] (got {restarts!r})")
        check("loss", loss in LOSSES, f"must be one of {', '.join(LOSSES)} (got {loss!r})")
        check("n_target_classes", isinstance(n_target_classes, int) and n_target_classes >= 1,
              f"must be an integer >= 1 (got {n_target_classes!r})")
        check("rho", 0 < rho < 1, f"must be in (0, 1) (got {rho})")
        check("random_start", isinstance(random_start, bool), "must be true or false")
        self.steps = steps
        self.restarts = restarts
        self.loss = loss
        self.n_target_classes = n_target_classes
        self.rho = float(rho)
        self.random_start = random_start

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        targets: torch.Tensor | None = None
        if self.loss == "dlr-targeted":
            with torch.no_grad():
                targets = ranked_targets(model(x), y, self.n_target_classes)
            rounds = [(t, r) for t in range(targets.shape[0]) for r in range(self.restarts)]
        else:
            rounds = [(0, r) for r in range(self.restarts)]
        best = x.detach().clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for i, (t, _) in enumerate(rounds):
            if i == 0:
                idx = None
                xs, ys = x, y
            else:
                idx = (~found).nonzero().squeeze(1)  # one sync per round, not per step
                if idx.numel() == 0:
                    break
                xs, ys = x[idx], y[idx]
            tgt = None if targets is None else (targets[t] if idx is None else targets[t][idx])
            adv, ok = self._one_run(model, xs, ys, tgt, threat, objective, generator)
            if idx is None:
                best, found = adv, ok
            else:
                best[idx] = adv
                found[idx] = ok
        return AttackResult(best)

    def _loss(self, objective: Objective, logits: torch.Tensor, y: torch.Tensor,
              target: torch.Tensor | None) -> torch.Tensor:
        if self.loss == "ce":
            return objective.loss(logits, y)
        if self.loss == "dlr" or target is None:
            return dlr(logits, y)
        return dlr_targeted(logits, y, target)

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 target: torch.Tensor | None, threat: ThreatModel, objective: Objective,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach()
        n = x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        ckpts = set(checkpoints(self.steps))
        # Results for the whole batch; the loop itself runs on the still-unbroken samples only
        # (``pos`` maps them to their rows), compacted at the checkpoints.
        out = x.clone()
        out_found = torch.zeros(n, dtype=torch.bool, device=x.device)
        pos = torch.arange(n, device=x.device)

        def evaluate(xa: torch.Tensor, ya: torch.Tensor, ta: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            loss = self._loss(objective, logits, ya, ta)
            (g,) = torch.autograd.grad(loss.sum(), xa)
            return loss.detach(), logits.detach(), g.detach()

        x_cur = random_in_ball(x, threat, generator) if self.random_start else x.clone()
        loss_cur, logits, grad = evaluate(x_cur, y, target)
        found = objective.success(logits, y)
        first = x_cur
        x_best, loss_best, grad_best = x_cur, loss_cur, grad
        x_prev, loss_prev = x_cur, loss_cur
        eta = torch.full((n,), 2.0 * threat.eps, device=x.device, dtype=x.dtype)
        improved_count = torch.zeros(n, device=x.device)
        loss_best_ckpt = loss_best.clone()
        reduced_last = torch.zeros(n, dtype=torch.bool, device=x.device)
        last_ckpt = 0
        for k in range(1, self.steps):
            with torch.no_grad():
                z = project(x, x_cur + eta.view(view) * ascent_direction(grad, threat.norm),
                            threat)
                a = 1.0 if k == 1 else 0.75
                x_new = project(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), threat)
                x_prev, x_cur = x_cur, x_new
            loss_cur, logits, grad = evaluate(x_cur, y, target)
            with torch.no_grad():
                newly = objective.success(logits, y) & ~found
                first = torch.where(newly.view(view), x_cur, first)
                found = found | newly
                improved_count += (loss_cur > loss_prev).float()
                loss_prev = loss_cur
                better = loss_cur > loss_best
                x_best = torch.where(better.view(view), x_cur, x_best)
                grad_best = torch.where(better.view(view), grad, grad_best)
                loss_best = torch.where(better, loss_cur, loss_best)
                if k not in ckpts:
                    continue
                too_few = improved_count < self.rho * (k - last_ckpt)
                stalled = ~reduced_last & (loss_best <= loss_best_ckpt)
                reduce = too_few | stalled
                eta = torch.where(reduce, eta / 2, eta)
                x_cur = torch.where(reduce.view(view), x_best, x_cur)
                x_prev = torch.where(reduce.view(view), x_best, x_prev)
                grad = torch.where(reduce.view(view), grad_best, grad)
                reduced_last = reduce
                improved_count.zero_()
                loss_best_ckpt = loss_best.clone()
                last_ckpt = k
                if not bool(found.any()):  # one sync per checkpoint
                    continue
                # Broken samples are done: record their first successful iterate, drop them.
                done = found.nonzero().squeeze(1)
                out[pos[done]] = first[done]
                out_found[pos[done]] = True
                keep = (~found).nonzero().squeeze(1)
                if keep.numel() == 0:
                    return out, out_found
                pos, x, y = pos[keep], x[keep], y[keep]
                target = None if target is None else target[keep]
                x_cur, x_prev, x_best, first = x_cur[keep], x_prev[keep], x_best[keep], first[keep]
                grad, grad_best = grad[keep], grad_best[keep]
                loss_best, loss_prev, loss_best_ckpt = loss_best[keep], loss_prev[keep], \
                    loss_best_ckpt[keep]
                eta, improved_count, reduced_last = eta[keep], improved_count[keep], \
                    reduced_last[keep]
                found = found[keep]
        # Broken samples keep their first successful iterate; the rest their highest-loss point.
        out[pos] = torch.where(found.view(view), first, x_best)
        out_found[pos] = found
        return out, out_found
