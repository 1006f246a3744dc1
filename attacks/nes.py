"""NES: a black-box, query-based attack for objectives with discrete scores (a perceptual hash's
Hamming distance), with an SSIM-friendly perturbation prior. It serves the hash range."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arange.registry import register_attack
from arange.threat import Norm, ThreatModel, levels_in_ball

from .base import Attack, AttackResult, Objective, check


def activity_mask(x: torch.Tensor, tau: float = 8 / 255, floor: float = 0.05,
                  window: int = 7) -> torch.Tensor:
    """Where an image can take a change unnoticed: the local standard deviation of its luma over
    SSIM's window (7x7), divided by ``tau`` and clipped to [floor, 1], then smoothed. (N,1,H,W)."""
    w = torch.tensor((0.299, 0.587, 0.114), device=x.device, dtype=x.dtype)
    g = (x * w.view(1, 3, 1, 1)).sum(dim=1, keepdim=True) if x.shape[1] == 3 else x[:, :1]
    mu = F.avg_pool2d(g, window, 1, window // 2, count_include_pad=False)
    var = F.avg_pool2d(g * g, window, 1, window // 2, count_include_pad=False) - mu * mu
    m = (var.clamp_min(0.0).sqrt() / tau).clamp(floor, 1.0)
    return F.avg_pool2d(m, 5, 1, 2, count_include_pad=False)


@register_attack("nes", description="black-box NES on Hamming distances (antithetic sampling, "
                 "step control, restarts, query budget)")
class HashNES(Attack):
    """Black-box NES with antithetic sampling on a smooth low-resolution perturbation.

    The perturbation is a ``resolution`` x ``resolution`` grid (one for all channels when
    ``shared_channels``: a luminance change), upsampled bilinearly and, with ``mask``, scaled by
    the image's local activity so flat regions barely change (the SSIM-friendly prior of
    perceptual masking). Each round estimates the gradient of the Hamming-distance objective from
    ``samples`` antithetic pairs at radius ``sigma`` x r and takes a momentum step of
    ``rel_stepsize`` x r (L2-normalised direction). The search radius r starts at
    ``start_radius`` x eps and grows by half whenever ``patience`` rounds bring no progress, up to
    eps; at full radius the step is halved instead, and below ``min_rel_stepsize`` x r the search
    restarts from the clean image with fresh samples. After a success, ``refine`` queries try to
    zero random quarters of the grid and ``shrink`` bisects the overall scale (5 queries), each
    kept only if it still succeeds. ``max_queries`` per image is a hard budget: an image stops
    before any round that would exceed it.

    Every query is an image on the 8-bit grid inside the threat model (what would be saved), so
    the runner can count a success found at any query.
    """

    kind: ClassVar[str] = "black-box"
    tasks: ClassVar[tuple[str, ...]] = ("hash_matching",)
    iterative: ClassVar[bool] = True
    norms: ClassVar[tuple[Norm, ...]] = (Norm.linf, Norm.l2)
    step_params: ClassVar[tuple[str, ...]] = ("max_queries",)
    restart_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, max_queries: int = 1000, samples: int = 10, sigma: float = 1.0,
                 rel_stepsize: float = 0.25, min_rel_stepsize: float = 0.02,
                 momentum: float = 0.5, patience: int = 3, start_radius: float = 0.25,
                 resolution: int = 8, shared_channels: bool = True, mask: bool = True,
                 refine: int = 30, shrink: bool = True, chunk: int = 32):
        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check("max_queries", integer(max_queries) and 10 <= max_queries <= 10_000_000,
              f"must be an integer in [10, 10000000] (got {max_queries!r})")
        check("samples", integer(samples) and 1 <= samples <= 1000,
              f"must be an integer in [1, 1000] (got {samples!r})")
        check("sigma", num(sigma) and 0 < sigma <= 4, f"must be in (0, 4] (got {sigma!r})")
        check("rel_stepsize", num(rel_stepsize) and 0 < rel_stepsize <= 2,
              f"must be in (0, 2] (got {rel_stepsize!r})")
        check("min_rel_stepsize", num(min_rel_stepsize) and 0 < min_rel_stepsize <= rel_stepsize,
              f"must be in (0, rel_stepsize] (got {min_rel_stepsize!r})")
        check("momentum", num(momentum) and 0 <= momentum < 1,
              f"must be in [0, 1) (got {momentum!r})")
        check("patience", integer(patience) and 1 <= patience <= 1000,
              f"must be an integer in [1, 1000] (got {patience!r})")
        check("start_radius", num(start_radius) and 0 < start_radius <= 1,
              f"must be in (0, 1] (got {start_radius!r})")
        check("resolution", integer(resolution) and 2 <= resolution <= 1024,
              f"must be an integer in [2, 1024] (got {resolution!r})")
        check("shared_channels", isinstance(shared_channels, bool), "must be true or false")
        check("mask", isinstance(mask, bool), "must be true or false")
        check("refine", integer(refine) and 0 <= refine <= 100_000,
              f"must be an integer in [0, 100000] (got {refine!r})")
        check("shrink", isinstance(shrink, bool), "must be true or false")
        check("chunk", integer(chunk) and 1 <= chunk <= 65536,
              f"must be an integer in [1, 65536] (got {chunk!r})")
        self.max_queries = max_queries
        self.samples = samples
        self.sigma = float(sigma)
        self.rel_stepsize = float(rel_stepsize)
        self.min_rel_stepsize = float(min_rel_stepsize)
        self.momentum = float(momentum)
        self.patience = patience
        self.start_radius = float(start_radius)
        self.resolution = resolution
        self.shared_channels = shared_channels
        self.mask = mask
        self.refine = refine
        self.shrink = shrink
        self.chunk = chunk

    # -- what a parameter means
    def delta255(self, z: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None
                 ) -> torch.Tensor:
        """The perturbation of a parameter ``z`` (N, c, r, r), in 8-bit levels (``weight`` is
        the activity mask times 255)."""
        d = F.interpolate(z, size=shape[-2:], mode="bilinear", align_corners=False)
        d = d * weight if weight is not None else d * 255.0
        if d.shape[1] != shape[1]:
            d = d.expand(-1, shape[1], -1, -1)
        return d

    def _project(self, z: torch.Tensor, r: torch.Tensor, shape: tuple[int, ...],
                 weight: torch.Tensor | None, norm: Norm) -> torch.Tensor:
        """``z`` inside radius ``r`` (per image; L-inf on the grid values, L2 on the image)."""
        view = (-1,) + (1,) * (z.dim() - 1)
        if norm is Norm.linf:
            rv = r.view(view)
            return torch.maximum(torch.minimum(z, rv), -rv)
        nrm = self.delta255(z, shape, weight).flatten(1).norm(dim=1) / 255.0
        return z * torch.clamp(r / (nrm + 1e-12), max=1.0).view(view)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        if threat.bounds != (0.0, 1.0):
            raise ValueError(f"nes works on 8-bit images with bounds (0, 1) (got "
                             f"{threat.bounds})")
        n, dev, dt = x.shape[0], x.device, x.dtype
        c = 1 if self.shared_channels else x.shape[1]
        zshape = (c, self.resolution, self.resolution)
        dim = c * self.resolution * self.resolution
        P = self.samples
        eps = float(threat.eps)
        numel = x[0].numel()
        # per-coordinate amplitude of the full radius: eps for L-inf; for L2 the amplitude
        # whose full-resolution perturbation has a norm of about eps
        amp = eps if threat.norm is Norm.linf else eps / numel ** 0.5
        to_radius = 1.0 if threat.norm is Norm.linf else numel ** 0.5
        weight = activity_mask(x) * 255.0 if self.mask else None
        x255 = torch.round(x * 255.0)
        from_levels = getattr(model, "from_levels", None)

        def levels(rows: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
            w = None if weight is None else weight[rows]
            xr = x255[rows]
            return levels_in_ball(xr, self.delta255(zs, tuple(xr.shape), w), threat)

        def ev(rows: torch.Tensor, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Query the oracle on the images of parameters ``zs`` for images ``rows``."""
            fs, ss = [], []
            for i in range(0, rows.numel(), self.chunk):
                r = rows[i:i + self.chunk]
                q = levels(r, zs[i:i + self.chunk])
                out = from_levels(q) if from_levels is not None else model(q / 255.0)
                fs.append(objective.loss(out, y[r]).float())
                ss.append(objective.success(out, y[r]))
            return torch.cat(fs), torch.cat(ss)

        with torch.no_grad():
            queries = torch.zeros(n, dtype=torch.long, device=dev)
            z = torch.zeros((n, *zshape), device=dev, dtype=dt)
            all_rows = torch.arange(n, device=dev)
            f0, done = ev(all_rows, z)
            queries += 1
            z_best = z.clone()                   # the successful (or best) parameter
            f_best = f0.clone()
            radius = torch.full((n,), self.start_radius, device=dev, dtype=dt)  # x eps
            alpha = torch.full((n,), self.rel_stepsize, device=dev, dtype=dt)   # x radius
            since = torch.zeros(n, dtype=torch.long, device=dev)
            mom = torch.zeros((n, *zshape), device=dev, dtype=dt)
            seen = f0.clone()                    # best objective since the last restart

            while True:
                idx = ((~done) & (queries + 2 * P + 1 <= self.max_queries)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                m = idx.numel()
                za, wa = z[idx], (None if weight is None else weight[idx])
                r_abs = radius[idx] * amp
                u = torch.randn((m, P, *zshape), device=dev, dtype=dt, generator=generator)
                s = (self.sigma * r_abs).view(-1, 1, 1, 1, 1)
                wr = None if wa is None else wa.repeat_interleave(P, dim=0)
                rr = r_abs.repeat_interleave(P) * to_radius
                shape = (m * P, *x.shape[1:])
                zp = self._project((za.unsqueeze(1) + s * u).reshape(m * P, *zshape), rr, shape,
                                   wr, threat.norm)
                zm = self._project((za.unsqueeze(1) - s * u).reshape(m * P, *zshape), rr, shape,
                                   wr, threat.norm)
                # query order: pair p's + then - for p = 0..P-1; a success at any query counts
                zs_all = torch.stack([zp.view(m, P, *zshape), zm.view(m, P, *zshape)], dim=2)
                zs_all = zs_all.reshape(m, 2 * P, *zshape)
                f, ok = ev(idx.repeat_interleave(2 * P), zs_all.reshape(m * 2 * P, *zshape))
                queries[idx] += 2 * P
                f = f.view(m, P, 2)
                order_ok = ok.view(m, 2 * P)
                hit = order_ok.any(dim=1)
                if bool(hit.any()):
                    first = order_ok.float().argmax(dim=1)
                    k = hit.nonzero().squeeze(1)
                    z_best[idx[k]] = zs_all[k, first[k]]
                    done[idx[k]] = True
                fb, ib = f.reshape(m, 2 * P).max(dim=1)
                # gradient estimate (antithetic), momentum, L2-normalised step
                g = ((f[:, :, 0] - f[:, :, 1]).view(m, P, 1, 1, 1) * u).sum(dim=1)
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                mom[idx] = self.momentum * mom[idx] + (1 - self.momentum) * g
                mv = mom[idx]
                direction = mv / mv.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                step = (alpha[idx] * r_abs).view(-1, 1, 1, 1) * direction * dim ** 0.5
                z_new = self._project(za + step, r_abs * to_radius, (m, *x.shape[1:]), wa,
                                      threat.norm)
                f1, ok1 = ev(idx, z_new)
                queries[idx] += 1
                ok1 = ok1 & ~hit
                if bool(ok1.any()):
                    k = ok1.nonzero().squeeze(1)
                    z_best[idx[k]] = z_new[k]
                    done[idx[k]] = True
                z[idx] = z_new
                # keep the best point seen for images that never succeed
                top = torch.maximum(f1, fb)
                better = (top > f_best[idx]) & ~done[idx]
                if bool(better.any()):
                    k = better.nonzero().squeeze(1)
                    use_sample = (fb[k] > f1[k]).view(-1, 1, 1, 1)
                    z_best[idx[k]] = torch.where(use_sample, zs_all[k, ib[k]], z_new[k])
                    f_best[idx[k]] = top[k]
                # step control: progress resets patience; otherwise grow the radius up to eps,
                # then halve the step, then restart from the clean image
                progress = top > seen[idx]
                seen[idx] = torch.maximum(seen[idx], top)
                st = torch.where(progress, torch.zeros_like(since[idx]), since[idx] + 1)
                slow = st >= self.patience
                st = torch.where(slow, torch.zeros_like(st), st)
                rad = radius[idx]
                grow = slow & (rad < 1.0)
                rad = torch.where(grow, torch.clamp(rad * 1.5, max=1.0), rad)
                a = torch.where(grow, torch.full_like(rad, self.rel_stepsize),
                                torch.where(slow, alpha[idx] * 0.5, alpha[idx]))
                restart = a < self.min_rel_stepsize
                if bool(restart.any()):
                    k = restart.nonzero().squeeze(1)
                    z[idx[k]] = 0.0
                    mom[idx[k]] = 0.0
                    rad[k] = self.start_radius
                    a[k] = self.rel_stepsize
                    seen[idx[k]] = f0[idx[k]]
                radius[idx], alpha[idx], since[idx] = rad, a, st

            self._polish(ev, z_best, done, queries, generator)
            x_adv = torch.cat([levels(all_rows[i:i + self.chunk], z_best[i:i + self.chunk])
                               for i in range(0, n, self.chunk)]) / 255.0 if n else x.clone()
        return AttackResult(x_adv, queries=queries)

    def _polish(self, ev: Any, z_best: torch.Tensor, done: torch.Tensor, queries: torch.Tensor,
                generator: torch.Generator | None) -> None:
        """Lower the distortion of successes: prune random quarters, then bisect the scale."""
        for _ in range(self.refine):
            idx = (done & (queries + 1 <= self.max_queries)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            keep = (torch.rand(z_best[idx].shape, device=z_best.device, dtype=z_best.dtype,
                               generator=generator) > 0.25).to(z_best.dtype)
            trial = z_best[idx] * keep
            _, ok = ev(idx, trial)
            queries[idx] += 1
            z_best[idx[ok]] = trial[ok]
        if not self.shrink:
            return
        idx = (done & (queries + 5 <= self.max_queries)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        z0 = z_best[idx].clone()
        lo = torch.zeros(idx.numel(), device=z_best.device, dtype=z_best.dtype)
        hi = torch.ones_like(lo)
        for _ in range(5):
            mid = (lo + hi) / 2
            trial = z0 * mid.view(-1, 1, 1, 1)
            _, ok = ev(idx, trial)
            queries[idx] += 1
            z_best[idx[ok]] = trial[ok]
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)


