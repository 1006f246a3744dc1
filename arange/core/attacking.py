"""The one attack loop every range runs: attack a batch, then let the runner enforce the budget.

:func:`attack_in_batches` hands each batch to a registered attack, passes the attack's output
through :func:`arange.threat.enforce` (projection onto the eps-ball, the bounds, and the 8-bit
grid where the range evaluates 8-bit images) and scores the enforced examples with the range's
own ``score`` function. Only enforced examples leave the loop, so no range can evaluate an
example that breaks its budget, and every range counts budget violations the same way.

With ``batch_size: auto`` on CUDA a batch that runs out of memory is retried at half the size
from the random state it started with, so the result does not depend on the retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from arange.attacks.base import input_gradients_only
from arange.speed import BatchSize, restore_rng, rng_state
from arange.threat import Enforced, ThreatModel, enforce


@dataclass
class Attacked:
    """One attacked batch: the rows of the range's data it covers, the clean inputs and
    targets, what the runner evaluates, and what ``score`` said about it."""

    index: torch.Tensor          # rows (long, on the CPU)
    x: torch.Tensor              # clean inputs
    y: torch.Tensor              # the attack's targets (labels, hashes, masks)
    enforced: Enforced           # x_adv after enforce, violations, perturbation norms
    queries: torch.Tensor | None  # per-sample model queries of a black-box attack
    score: Any = None            # score(enforced.x_adv) for the range's own verdict

    @property
    def x_adv(self) -> torch.Tensor:
        return self.enforced.x_adv


def attack_in_batches(attack: Any, model: nn.Module, index: torch.Tensor,
                      load: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      threat: ThreatModel, objective: Any, generator: torch.Generator,
                      batch: BatchSize, *, bf16: bool = False,
                      score: Callable[[torch.Tensor], Any] | None = None) -> Iterator[Attacked]:
    """Attack the rows ``index`` (``load(rows) -> (x, y)`` on the device) batch by batch with
    ``attack.run(model, x, y, threat, objective, generator)``; yield each batch enforced and
    scored. ``bf16``: run the attack (never the scoring) under bfloat16 autocast."""
    device = generator.device
    index = index.cpu()
    start = 0
    while start < index.numel():
        rows = index[start:start + batch.size]
        x, y = load(rows)
        state = rng_state(generator, device)
        try:
            with input_gradients_only(model), _autocast(x.device, bf16):
                result = attack.run(model, x, y, threat, objective, generator)
            enforced = enforce(x, result.x_adv.detach().to(x.dtype), threat)
            verdict = score(enforced.x_adv) if score is not None else None
        except torch.cuda.OutOfMemoryError as e:
            if not batch.can_shrink(e):
                raise
            batch.halve()
            restore_rng(generator, state, device)
            continue
        start += int(rows.numel())
        yield Attacked(rows, x, y, enforced, result.queries, verdict)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
