"""Square Attack (Andriushchenko et al. 2020), L-inf, in torch: a score-based black-box attack.

Random search that only reads the model's outputs: start from vertical stripes of +-eps, then at
each query redraw one random square window (the same sign per channel inside it) and keep the
change when it lowers the margin ``z_y - max_{i != y} z_i``. The window's share of the image
starts at ``p_init`` and shrinks on a fixed schedule. Only samples that are still unbroken are
queried; the per-sample query count is reported.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from arange.registry import register_attack
from arange.threat import Norm, ThreatModel

from .base import Attack, AttackResult, Objective, check
from .losses import margin

# Query (scaled to a 10000-query budget) after which the window share is halved once more.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_share(i: int, n_queries: int, p_init: float) -> float:
    """The fraction of the image a window covers at query ``i`` of ``n_queries``."""
    scaled = int(i / max(n_queries, 1) * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


@register_attack("square", description="Square Attack (Andriushchenko et al.): score-based "
                 "black-box random search with square updates, L-inf; reports queries")
class Square(Attack):
    kind = "black-box"
    iterative = True
    norms = (Norm.linf,)
    step_params: ClassVar[tuple[str, ...]] = ("n_queries",)
    test_params: ClassVar[dict[str, Any]] = {"n_queries": 30}

    def __init__(self, n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1):
        check("n_queries", isinstance(n_queries, int) and 1 <= n_queries <= 1_000_000,
              f"must be an integer in [1, 1000000] (got {n_queries!r})")
        check("p_init", 0 < p_init <= 1, f"must be in (0, 1] (got {p_init})")
        check("restarts", isinstance(restarts, int) and 1 <= restarts <= 100,
              f"must be an integer in [1, 100] (got {restarts!r})")
        self.n_queries = n_queries
        self.p_init = float(p_init)
        self.restarts = restarts

    @torch.no_grad()
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        x = x.detach()
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, ok, q = self._one_run(model, x[idx], y[idx], threat, objective, generator)
            best[idx] = adv
            found[idx] = ok
            queries[idx] += q
        return AttackResult(best, queries=queries)

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 objective: Objective, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        eps, (lo, hi) = threat.eps, threat.bounds
        dev = x.device

        def signs(*shape: int) -> torch.Tensor:
            r = torch.randint(0, 2, shape, device=dev, generator=generator)
            return (2 * r - 1).to(x.dtype)

        # Vertical stripes: one sign per (sample, channel, column).
        x_best = (x + eps * signs(n, c, 1, w)).clamp(lo, hi)
        logits = model(x_best)
        loss_best = margin(logits, y)
        done = objective.success(logits, y)
        queries = torch.ones(n, device=dev)
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        for i in range(1, self.n_queries):
            active = (~done).nonzero().squeeze(1)  # one sync per query round
            if active.numel() == 0:
                break
            xa, xb, ya = x[active], x_best[active], y[active]
            m = active.numel()
            side = max(min(round(math.sqrt(window_share(i, self.n_queries, self.p_init) * h * w)),
                           h - 1), 1)
            top = torch.randint(0, h - side + 1, (m, 1, 1, 1), device=dev, generator=generator)
            left = torch.randint(0, w - side + 1, (m, 1, 1, 1), device=dev, generator=generator)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            delta = xb - xa
            new = torch.where(window, eps * signs(m, c, 1, 1), delta)
            cand = (xa + new).clamp(lo, hi)
            logits = model(cand)
            loss = margin(logits, ya)
            ok = objective.success(logits, ya)
            accept = (loss < loss_best[active]) | ok
            x_best[active] = torch.where(accept.view(-1, 1, 1, 1), cand, xb)
            loss_best[active] = torch.where(accept, loss, loss_best[active])
            done[active] = ok
            queries[active] += 1
        return x_best, done, queries
