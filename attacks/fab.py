"""FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack"), L-inf and L2, untargeted or targeted (FAB-T), in torch.

Each step linearises the decision boundary between the true class and a competitor at the current
point, and moves to a convex combination of the minimal-norm projections (onto that hyperplane,
inside the pixel box) of the current point and of the original image. Whenever the iterate is
adversarial it is pulled back towards the original image, so the attack homes in on the closest
adversarial example. The runner scores the result at the scenario's eps, so what matters is
whether an adversarial example within eps is found; the smallest one found is returned, projected
onto the eps-ball.

The minimal-norm projection onto ``{d : w.d = c} ∩ box`` is solved by bisection on the dual
variable, batched on the device.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import Norm, ThreatModel, norms, project

from .base import Attack, AttackResult, Objective, check, random_in_ball
from .losses import ranked_targets

_BISECTION_STEPS = 40


def project_hyperplane_box(w: torch.Tensor, c: torch.Tensor, lower: torch.Tensor,
                           upper: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per row, the smallest ``d`` (in ``norm``) with ``w.d = c`` and ``lower <= d <= upper``.

    ``w``, ``lower``, ``upper``: ``(N, D)`` with ``lower <= 0 <= upper``; ``c``: ``(N,)``. When the
    hyperplane cannot be reached inside the box the point of the box closest to it is returned.
    """
    dtype = w.dtype
    w, c, lower, upper = w.double(), c.double(), lower.double(), upper.double()
    # Reduce to c >= 0 by flipping the sign of w; then every coordinate moves towards sign(w).
    flip = torch.where(c < 0, -1.0, 1.0).to(w)
    w = w * flip[:, None]
    c = c.abs()
    direction = torch.sign(w)
    room = torch.where(w > 0, upper, -lower).clamp_min(0)  # how far each coordinate may move
    aw = w.abs()
    if norm is Norm.linf:
        # h(t) = sum |w_i| min(t, room_i) is increasing in t; find the smallest t with h(t) >= c.
        lo = torch.zeros_like(c)
        hi = room.amax(dim=1)
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            ok = (aw * torch.minimum(mid[:, None], room)).sum(dim=1) >= c
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        step = torch.minimum(hi[:, None], room)
    else:
        # KKT: d_i = clip(lam * w_i) to the room; h(lam) = sum |w_i| min(lam |w_i|, room_i).
        ratio = torch.where(aw > 0, room / aw.clamp_min(1e-30), torch.zeros_like(room))
        hi = ratio.amax(dim=1).clamp_min(1e-30)
        lo = (c / (aw * aw).sum(dim=1).clamp_min(1e-30)).clamp(max=hi)  # unconstrained solution
        lo, hi = lo.clamp_min(1e-30).log(), hi.log()
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            ok = (aw * torch.minimum(mid.exp()[:, None] * aw, room)).sum(dim=1) >= c
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        step = torch.minimum(hi.exp()[:, None] * aw, room)
    return (direction * step).to(dtype)


@register_attack("fab", description="FAB (Croce & Hein): minimal-norm attack by projections onto "
                 "the linearised boundary; targeted=true gives FAB-T; L-inf or L2")
class FAB(Attack):
    iterative = True
    test_params: ClassVar[dict[str, Any]] = {"steps": 5, "n_target_classes": 2}

    def __init__(self, steps: int = 100, restarts: int = 1, targeted: bool = False,
                 n_target_classes: int = 9, alpha_max: float = 0.1, overshoot: float = 1.05,
                 backtrack: float = 0.9):
        check("steps", isinstance(steps, int) and 1 <= steps <= 100_000,
              f"must be an integer in [1, 100000] (got {steps!r})")
        check("restarts", isinstance(restarts, int) and 1 <= restarts <= 1000,
              f"must be an integer in [1, 1000] (got {restarts!r})")
        check("targeted", isinstance(targeted, bool), "must be true or false")
        check("n_target_classes", isinstance(n_target_classes, int) and n_target_classes >= 1,
              f"must be an integer >= 1 (got {n_target_classes!r})")
        check("alpha_max", 0 <= alpha_max < 1, f"must be in [0, 1) (got {alpha_max})")
        check("overshoot", 1 <= overshoot <= 2, f"must be in [1, 2] (got {overshoot})")
        check("backtrack", 0 < backtrack < 1, f"must be in (0, 1) (got {backtrack})")
        self.steps = steps
        self.restarts = restarts
        self.targeted = targeted
        self.n_target_classes = n_target_classes
        self.alpha_max = float(alpha_max)
        self.overshoot = float(overshoot)
        self.backtrack = float(backtrack)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        x = x.detach()
        targets: torch.Tensor | None = None
        if self.targeted:
            with torch.no_grad():
                targets = ranked_targets(model(x), y, self.n_target_classes)
            rounds = [(t, r) for t in range(targets.shape[0]) for r in range(self.restarts)]
        else:
            rounds = [(0, r) for r in range(self.restarts)]
        best = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
        for t, r in rounds:
            idx = (best_norm > threat.eps).nonzero().squeeze(1)  # one sync per round
            if idx.numel() == 0:
                break
            tgt = None if targets is None else targets[t][idx]
            adv, n = self._one_run(model, x[idx], y[idx], tgt, threat, objective, generator,
                                   random_start=r > 0)
            better = n < best_norm[idx]
            best[idx] = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), adv, best[idx])
            best_norm[idx] = torch.minimum(n, best_norm[idx])
        return AttackResult(project(x, best, threat))

    @staticmethod
    def _boundary(model: nn.Module, xa: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearisation ``(g, grad g)`` of ``z_other - z_y`` at ``xa``."""
        xa = xa.detach().requires_grad_(True)
        logits = model(xa)
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        if target is not None:
            g = logits.gather(1, target[:, None]).squeeze(1) - z_y
            (grad,) = torch.autograd.grad(g.sum(), xa)
            return g.detach(), grad.detach()
        # Untargeted: the class whose linearised boundary is closest.
        gs, grads = [], []
        for k in range(logits.shape[1]):
            gk = logits[:, k] - z_y
            (gradk,) = torch.autograd.grad(gk.sum(), xa, retain_graph=True)
            gs.append(gk.detach())
            grads.append(gradk.detach())
        g_all = torch.stack(gs, dim=1)  # (N, C)
        grad_all = torch.stack(grads, dim=1)  # (N, C, ...)
        dual = grad_all.flatten(2).abs().sum(2) if norm is Norm.linf \
            else grad_all.flatten(2).norm(dim=2)
        dist = g_all.abs() / (dual + 1e-12)
        dist = dist.scatter(1, y[:, None], float("inf"))
        closest = dist.argmin(dim=1)
        g = g_all.gather(1, closest[:, None]).squeeze(1)
        grad = grad_all[torch.arange(xa.shape[0], device=xa.device), closest]
        return g, grad

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 target: torch.Tensor | None, threat: ThreatModel, objective: Objective,
                 generator: torch.Generator | None, random_start: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        lo_b, hi_b = threat.bounds
        n = x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        flat_x = x.flatten(1)
        cur = x.clone()
        if random_start:
            half = ThreatModel(threat.norm, threat.eps / 2, threat.bounds)
            cur = random_in_ball(x, half, generator)
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device)
        for _ in range(self.steps):
            g, grad = self._boundary(model, cur, y, target, threat.norm)
            with torch.no_grad():
                w = grad.flatten(1)
                flat_cur = cur.flatten(1)
                # Projection of the current point: w.d = -g reaches g = 0 in the linear model.
                d_cur = project_hyperplane_box(w, -g, lo_b - flat_cur, hi_b - flat_cur,
                                               threat.norm)
                # Projection of the original image onto the same hyperplane.
                c_orig = -g - (w * (flat_x - flat_cur)).sum(dim=1)
                d_orig = project_hyperplane_box(w, c_orig, lo_b - flat_x, hi_b - flat_x,
                                                threat.norm)
                n_cur = norms(d_cur, threat.norm)
                n_orig = norms(d_orig, threat.norm)
                alpha = (n_cur / (n_cur + n_orig + 1e-12)).clamp(0, self.alpha_max)[:, None]
                nxt = (1 - alpha) * (flat_cur + self.overshoot * d_cur) \
                    + alpha * (flat_x + self.overshoot * d_orig)
                nxt = nxt.clamp(lo_b, hi_b).view_as(x)
                ok = objective.success(model(nxt), y)
                nrm = norms(nxt - x, threat.norm)
                better = ok & (nrm < best_norm)
                best = torch.where(better.view(view), nxt, best)
                best_norm = torch.where(better, nrm, best_norm)
                # Adversarial iterates are pulled back towards the original image.
                cur = torch.where(ok.view(view), x + self.backtrack * (nxt - x), nxt)
        return best, best_norm
