"""Classification losses used by attacks that need more than the task's cross-entropy.

All take logits ``(N, C)`` and integer labels ``(N,)`` and return a per-sample loss that the
attack *maximises*.
"""

from __future__ import annotations

import torch


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i``: positive while the sample is classified correctly."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(dim=1)


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), untargeted.

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`` with ``z_(k)`` the k-th largest logit. The
    ratio is invariant to shifting and scaling the logits, so saturated or rescaled logits do not
    flatten it the way they flatten cross-entropy.
    """
    s = logits.sort(dim=1, descending=True).values
    third = s[:, min(2, s.shape[1] - 1)]
    return -margin(logits, y) / (s[:, 0] - third + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``."""
    s = logits.sort(dim=1, descending=True).values
    c = s.shape[1]
    z3, z4 = s[:, min(2, c - 1)], s[:, min(3, c - 1)]
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (s[:, 0] - 0.5 * (z3 + z4) + 1e-12)


def ranked_targets(logits: torch.Tensor, y: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` most likely wrong classes per sample, most likely first: ``(count, N)``."""
    others = logits.scatter(1, y[:, None], float("-inf"))
    count = min(count, logits.shape[1] - 1)
    return others.argsort(dim=1, descending=True)[:, :count].T.contiguous()
