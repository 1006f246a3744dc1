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

from typing import Any, Literal

import torch
from torch import nn

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


class LearnedWithExact(nn.Module):
    """White-box view of a learned hash: (soft margins through the twin, exact bits by
    onnxruntime on the 8-bit image)."""

    def __init__(self, name: str, params: dict[str, Any]):
        super().__init__()
        from .learned import LearnedExact, LearnedSurrogate, hash_for
        h = hash_for(name, params)
        self.surrogate = LearnedSurrogate(h)
        self.exact = LearnedExact(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = self.surrogate(x)
        with torch.no_grad():
            bits = self.exact(x.detach())
        return soft, bits


def exact_oracle(name: str, params: dict[str, Any]) -> nn.Module | None:
    """The exact fast path of hash ``name`` as a module (images -> float bits), or None when it
    has none (the reference library is queried instead)."""
    from .reference import HASHES
    spec = HASHES.get(name)
    if spec.learned:
        from .learned import LearnedExact, hash_for
        return LearnedExact(hash_for(name, params))
    return ExactHash(name, int(params.get("hash_size", 8))) if spec.fast else None


def white_box_view(name: str, params: dict[str, Any]) -> nn.Module:
    """(soft margins, exact bits) for the white-box attacks."""
    from .reference import HASHES
    if HASHES.get(name).learned:
        return LearnedWithExact(name, params)
    return SurrogateWithExact(name, int(params.get("hash_size", 8)))


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
