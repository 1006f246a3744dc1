"""Attacks on perceptual-hash matchers and the objectives that define their goals.

* ``nes`` - black-box detection avoidance / collision in the spirit of Jain, Cretu and
  de Montjoye (USENIX Security 2022): the attacker only sees hash values (Hamming distances).
  Gradients are estimated by NES with antithetic pairs on a low-resolution perturbation
  (bilinearly upsampled, a smooth image prior that keeps SSIM high), with step-size control and
  random restarts, under a hard per-image query budget. Every query is an image inside the
  budget on the 8-bit grid, exactly what would be saved, so a success found at any query counts.
* ``pgd`` - white-box evasion / collision: arange's own PGD (:mod:`arange.attacks.pgd`, the one the
  classifier attacks use) driven through a differentiable surrogate of the hash with soft
  thresholds (:class:`SurrogateObjective`); success is read off the exact hash of each iterate.

Goals: ``evasion`` (push the image's hash more than ``threshold`` bits away from its database
entry) and ``collision`` (pull an innocent image's hash within ``threshold`` bits of a chosen
database hash, a second preimage).

The runner, not the attack, decides what counts (see :mod:`arange.hashing.runner`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from arange.attacks.base import Attack, AttackResult, Objective, check
from arange.attacks.pgd import PGD
from arange.registry import Registry
from arange.threat import Norm, ThreatModel

from .fast import HashSurrogate, fast_hash, fast_hash_levels

Goal = Literal["evasion", "collision"]
GOALS: tuple[str, ...] = ("evasion", "collision")


# ---------------------------------------------------------------------------- hash "models"

class ExactHash(nn.Module):
    """The black-box oracle: images -> exact hash bits (float 0/1), via the torch fast path."""

    def __init__(self, name: str, hash_size: int = 8):
        super().__init__()
        self.name = name
        self.hash_size = hash_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_hash(self.name, x, self.hash_size).float()

    def from_levels(self, q: torch.Tensor) -> torch.Tensor:
        """The same for images given as float levels in {0, ..., 255} (saves a rounding pass)."""
        return fast_hash_levels(self.name, q, self.hash_size).float()


class SurrogateWithExact(nn.Module):
    """White-box view of a hash: (soft per-bit margins, exact bits of the 8-bit image)."""

    def __init__(self, name: str, hash_size: int = 8):
        super().__init__()
        self.surrogate = HashSurrogate(name, hash_size)
        self.exact = ExactHash(name, hash_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = self.surrogate(x)
        with torch.no_grad():
            bits = self.exact(x.detach())
        return soft, bits


# ---------------------------------------------------------------------------- objectives

def _check_goal(goal: str, threshold: int, margin: int) -> None:
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)} (got {goal!r})")
    if threshold < 0 or margin < 0:
        raise ValueError("threshold and margin must be >= 0")


class HammingObjective:
    """Black-box objective on exact bits. ``target``: the reference bits to move away from
    (evasion) or towards (collision). The loss (maximised) is the Hamming distance for evasion
    and its negative for collision; success needs ``margin`` bits beyond the threshold."""

    def __init__(self, goal: Goal, threshold: int, margin: int = 0):
        _check_goal(goal, threshold, margin)
        self.goal, self.threshold, self.margin = goal, int(threshold), int(margin)

    @staticmethod
    def distance(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.bool() != target.bool()).sum(dim=1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.distance(output, target).float()
        return d if self.goal == "evasion" else -d

    def success(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.distance(output, target)
        if self.goal == "evasion":
            return d > self.threshold + self.margin
        return d <= max(self.threshold - self.margin, 0)


class SurrogateObjective:
    """White-box objective with soft thresholds, for :class:`SurrogateWithExact` outputs.

    ``m_b`` is the surrogate margin of bit b (pre-threshold value minus threshold, in units of
    the image's median absolute margin) signed towards the target bit, so positive means the bit
    agrees with the target. Evasion maximises ``sum_b min(-m_b, kappa)`` over the
    ``threshold + 1 + margin`` bits easiest to flip, taken half from each side of the threshold
    (rounded up): with a median threshold (pHash, PDQ) a bit can only cross if another crosses
    the other way. Collision maximises ``sum_b min(m_b, kappa)`` over all bits. The hinge keeps
    a flipped bit's gradient until it is ``kappa`` past the threshold, so PGD does not let it
    drift back. Success is read off the exact bits."""

    def __init__(self, goal: Goal, threshold: int, margin: int = 0, kappa: float = 0.2):
        _check_goal(goal, threshold, margin)
        self.hamming = HammingObjective(goal, threshold, margin)
        self.goal = goal
        self.k = int(threshold) + 1 + int(margin)
        self.kappa = float(kappa)

    def loss(self, output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
             ) -> torch.Tensor:
        soft, _ = output
        m = soft * (2.0 * target.to(soft.dtype) - 1.0)
        if self.goal == "evasion":
            ones = target.bool()
            big = torch.finfo(m.dtype).max / 4
            k1 = k0 = (self.k + 1) // 2
            e1 = torch.topk(torch.where(ones, m, big), min(k1, m.shape[1]), dim=1,
                            largest=False).values
            e0 = torch.topk(torch.where(ones, big, m), min(k0, m.shape[1]), dim=1,
                            largest=False).values
            easiest = torch.cat([e1, e0], dim=1)
            return torch.clamp(-easiest, min=-big, max=self.kappa).sum(dim=1)
        return torch.clamp(m, max=self.kappa).sum(dim=1)

    def success(self, output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
                ) -> torch.Tensor:
        return self.hamming.success(output[1], target)


# ---------------------------------------------------------------------------- NES

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
    :func:`levels_in_ball`); ``x`` must be on the grid and the bounds [0, 1]. The result is a
    fixed point of :func:`arange.threat.enforce` with quantisation."""
    if threat.bounds != (0.0, 1.0):
        raise ValueError(f"8-bit images need bounds (0, 1) (got {threat.bounds})")
    x255 = torch.round(x * 255.0)
    return levels_in_ball(x255, (x_adv - x) * 255.0, threat) / 255.0


# ---------------------------------------------------------------------------- registry

HASH_ATTACKS: Registry[Any] = Registry("hash attack")
HASH_ATTACKS.add("nes", HashNES, "black-box NES on Hamming distances (antithetic sampling, "
                 "step control, restarts, query budget)")
HASH_ATTACKS.add("pgd", PGD, "white-box PGD (arange's classifier PGD) through a differentiable "
                 "surrogate with soft thresholds; DCT-family hashes only")
