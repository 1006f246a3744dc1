"""Square Attack (Andriushchenko et al. 2020), L-inf and L2, in torch: a score-based black-box
attack.

Random search that only reads the model's outputs, keeping a change when it lowers the margin
``z_y - max_{i != y} z_i`` (or breaks the sample). The window's share of the image starts at
``p_init`` and shrinks on a fixed schedule. Only samples that are still unbroken are queried; the
per-sample query count is reported.

- L-inf: start from vertical stripes of +-eps; each query redraws one random square window with
  the same sign per channel inside it.
- L2: start from a grid of "bumps" (a positive and a negative peak, each decaying with
  Chebyshev distance from its centre) with a random sign per channel, scaled to norm eps; each
  query moves the perturbation's energy from a second random window, and whatever budget is
  unused, into a fresh bump in the first one, so the whole stays on the eps sphere.
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


def bump(a: int, b: int, device: torch.device | None = None) -> torch.Tensor:
    """An ``a x b`` peak of unit L2 norm: the sum of 1/(k+1)^2 over the centred squares of
    half-width k that cover a point, so a point at Chebyshev distance d from the centre gets
    ``sum_{k=d}^{K-1} 1/(k+1)^2``."""
    r = (torch.arange(a, device=device) - a // 2).abs().view(-1, 1)
    c = (torch.arange(b, device=device) - b // 2).abs().view(1, -1)
    d = torch.maximum(r, c)
    k = max(a // 2, b // 2) + 1
    tail = (1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float64) ** 2).flip(0)
    tail = tail.cumsum(0).flip(0)  # tail[d] = sum_{k >= d} 1/(k+1)^2
    out = tail[d.clamp(max=k - 1)]
    return (out / out.norm().clamp_min(1e-12)).float()


def l2_pattern(s: int, device: torch.device | None = None) -> torch.Tensor:
    """The L2 update: a positive bump over the top half of an ``s x s`` window and a negative one
    over the bottom half, unit L2 norm."""
    top = bump(s // 2, s, device) if s // 2 else torch.zeros(0, s, device=device)
    out = torch.cat([top, -bump(s - s // 2, s, device)])
    return out / out.norm().clamp_min(1e-12)


@register_attack("square", description="Square Attack (Andriushchenko et al.): score-based "
                 "black-box random search with square updates, L-inf and L2; reports queries")
class Square(Attack):
    kind = "black-box"
    iterative = True
    norms = (Norm.linf, Norm.l2)
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
        """The random search shared by both norms: each query proposes one candidate per
        still-unbroken sample and keeps it when it lowers the margin or breaks the sample."""
        draw = _Draw(x, generator)
        linf = threat.norm is Norm.linf
        x_best = _start_linf(x, threat, draw) if linf else _start_l2(x, threat, draw)
        logits = model(x_best)
        loss_best = margin(logits, y)
        done = objective.success(logits, y)
        queries = torch.ones(x.shape[0], device=x.device)
        for i in range(1, self.n_queries):
            active = (~done).nonzero().squeeze(1)  # one sync per query round
            if active.numel() == 0:
                break
            xa, xb, ya = x[active], x_best[active], y[active]
            share = window_share(i, self.n_queries, self.p_init)
            cand = _step_linf(xa, xb, share, threat, draw) if linf else \
                _step_l2(xa, xb, share, threat, draw)
            logits = model(cand)
            loss = margin(logits, ya)
            ok = objective.success(logits, ya)
            accept = (loss < loss_best[active]) | ok
            x_best[active] = torch.where(accept.view(-1, 1, 1, 1), cand, xb)
            loss_best[active] = torch.where(accept, loss, loss_best[active])
            done[active] = ok
            queries[active] += 1
        return x_best, done, queries


class _Draw:
    """The random draws of one run, from its generator: signs and square windows."""

    def __init__(self, x: torch.Tensor, generator: torch.Generator | None):
        self.dtype, self.device, self.generator = x.dtype, x.device, generator
        _, _, self.h, self.w = x.shape
        self.rows = torch.arange(self.h, device=x.device).view(1, 1, self.h, 1)
        self.cols = torch.arange(self.w, device=x.device).view(1, 1, 1, self.w)

    def signs(self, *shape: int) -> torch.Tensor:
        r = torch.randint(0, 2, shape, device=self.device, generator=self.generator)
        return (2 * r - 1).to(self.dtype)

    def window(self, m: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A ``side x side`` window per sample: its (m, 1, h, w) mask, top and left."""
        top = torch.randint(0, self.h - side + 1, (m, 1, 1, 1), device=self.device,
                            generator=self.generator)
        left = torch.randint(0, self.w - side + 1, (m, 1, 1, 1), device=self.device,
                             generator=self.generator)
        inside = (self.rows >= top) & (self.rows < top + side) & (self.cols >= left) & \
            (self.cols < left + side)
        return inside, top, left


def _start_linf(x: torch.Tensor, threat: ThreatModel, draw: _Draw) -> torch.Tensor:
    """Vertical stripes: one sign per (sample, channel, column)."""
    n, c, _, w = x.shape
    lo, hi = threat.bounds
    return (x + threat.eps * draw.signs(n, c, 1, w)).clamp(lo, hi)


def _step_linf(xa: torch.Tensor, xb: torch.Tensor, share: float, threat: ThreatModel,
               draw: _Draw) -> torch.Tensor:
    """Redraw one window per sample at +-eps, one sign per channel."""
    m, c, h, w = xa.shape
    lo, hi = threat.bounds
    side = max(min(round(math.sqrt(share * h * w)), h - 1), 1)
    window, _, _ = draw.window(m, side)
    new = torch.where(window, threat.eps * draw.signs(m, c, 1, 1), xb - xa)
    return (xa + new).clamp(lo, hi)


def _on_sphere(x: torch.Tensor, delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """``x`` plus ``delta`` scaled to L2 norm eps, inside the bounds (clamping only shortens
    it)."""
    lo, hi = threat.bounds
    size = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (x + threat.eps * delta / (size + 1e-12)).clamp(lo, hi)


def _start_l2(x: torch.Tensor, threat: ThreatModel, draw: _Draw) -> torch.Tensor:
    """A centred grid of 5 x 5 bump pairs (side h // 5), a random sign per (sample, channel,
    pair), scaled to norm eps."""
    n, c, h, w = x.shape
    side = max(h // 5, 1)
    pattern = l2_pattern(side, x.device).to(x.dtype)
    delta = torch.zeros_like(x)
    top0, left0 = max((h - side * 5) // 2, 0), max((w - side * 5) // 2, 0)
    for i in range(h // side):
        for j in range(w // side):
            r, q = top0 + i * side, left0 + j * side
            if r + side <= h and q + side <= w:
                delta[:, :, r:r + side, q:q + side] += pattern * draw.signs(n, c, 1, 1)
    return _on_sphere(x, delta, threat)


def _step_l2(xa: torch.Tensor, xb: torch.Tensor, share: float, threat: ThreatModel,
             draw: _Draw) -> torch.Tensor:
    """Move the energy of a second window, and whatever budget is unused, into a fresh bump
    pair in the first window (added to what was there), per channel; then back to the sphere."""
    m, c, h, w = xa.shape
    side = max(round(math.sqrt(share * h * w)), 3)
    side = min(side + (side % 2 == 0), h, w)  # odd, at least 3, inside the image
    into, top, left = draw.window(m, side)    # where the energy goes
    out_of, _, _ = draw.window(m, side)       # where it is taken from
    delta = xb - xa
    energy_in = (delta * into).square().sum((2, 3), keepdim=True).sqrt()
    energy_both = (delta * (into | out_of)).square().sum((2, 3), keepdim=True)
    spare = (threat.eps ** 2 - delta.flatten(1).square().sum(1)).clamp_min(0).view(-1, 1, 1, 1)
    # the pair at each sample's window, transposed for a random half of the samples
    pattern = l2_pattern(side, xa.device).to(xa.dtype)
    flip = draw.signs(m, 1, 1, 1) > 0
    pr = (draw.rows - top).clamp(0, side - 1)
    pc = (draw.cols - left).clamp(0, side - 1)
    fresh = torch.where(flip, pattern[pc, pr], pattern[pr, pc]) * draw.signs(m, c, 1, 1)
    new = (fresh + delta / (energy_in + 1e-12)) * into
    new = new / (new.square().sum((2, 3), keepdim=True).sqrt() + 1e-12) * \
        (spare / c + energy_both).sqrt()
    delta = torch.where(into, new, torch.where(out_of, torch.zeros_like(delta), delta))
    return _on_sphere(xa, delta, threat)
