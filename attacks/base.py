"""The attack interface shared by native attacks and adapters."""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from arange.errors import ParamError
from arange.threat import Norm, ThreatModel, enforce


class Objective(Protocol):
    """What the attacker optimises and what counts as success; supplied by the task."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss; the attack maximises it."""
        ...

    def success(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample bool: the attack has reached its goal on this output."""
        ...


class Misclassification:
    """Untargeted classification: maximise cross-entropy; success when the label changes."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, reduction="none")

    def success(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=1) != target


@dataclass
class AttackResult:
    x_adv: torch.Tensor
    queries: torch.Tensor | None = None  # per-sample model queries, for black-box attacks


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Turn off parameter gradients for the duration (restored afterwards)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def check(name: str, ok: bool, message: str) -> None:
    """Validate a constructor parameter; raises :class:`ParamError` naming it."""
    if not ok:
        raise ParamError(name, message)


class Attack(ABC):
    """Base class: hyperparameters at construction, model and data at call time.

    Subclasses implement :meth:`run`. The runner calls ``run`` and then enforces the threat model
    itself; :meth:`__call__` does the same for direct use on a user's model and tensors.
    """

    kind: ClassVar[str] = "white-box"  # white-box | black-box | noise | transfer
    # The ranges (task names) whose objectives the attack serves; a scenario of another task
    # cannot name it.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    iterative: ClassVar[bool] = False
    norms: ClassVar[tuple[Norm, ...]] = (Norm.linf, Norm.l2)
    # Parameters that set the attack's compute (iterations / queries, and restarts); the
    # "more steps" validity check doubles the former and adds to the latter.
    step_params: ClassVar[tuple[str, ...]] = ("steps",)
    restart_params: ClassVar[tuple[str, ...]] = ("restarts",)
    # A cheap parameter set for contract tests (a handful of samples, a few iterations).
    test_params: ClassVar[dict[str, Any]] = {}

    @classmethod
    def stronger_params(cls, params: dict[str, Any], factor: int = 2,
                        extra_restarts: int = 1) -> dict[str, Any] | None:
        """``params`` with ``factor`` times the iterations and ``extra_restarts`` more restarts,
        or None when the attack has no such parameters (then the check is skipped)."""
        if not cls.iterative:
            return None
        defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()
                    if p.default is not inspect.Parameter.empty}
        out, changed = dict(params), False
        for key in cls.step_params:
            value = params.get(key, defaults.get(key))
            if isinstance(value, int) and not isinstance(value, bool):
                out[key] = value * factor
                changed = True
        for key in cls.restart_params:
            value = params.get(key, defaults.get(key))
            if extra_restarts and isinstance(value, int) and not isinstance(value, bool):
                out[key] = value + extra_restarts
                changed = True
        return out if changed else None

    @abstractmethod
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            objective: Objective, generator: torch.Generator | None = None) -> AttackResult:
        """Return proposed adversarial examples for ``x`` (float NCHW in the bounds)."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters, for the scorecard."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 norm: Norm | str = Norm.linf, objective: Objective | None = None,
                 seed: int | None = None) -> torch.Tensor:
        """Attack ``model`` on ``(x, y)`` and return budget-checked adversarial examples."""
        threat = ThreatModel(Norm(norm), float(eps))
        if threat.norm not in self.norms:
            raise ParamError("norm", f"{type(self).__name__} supports "
                             f"{', '.join(n.value for n in self.norms)} (got {threat.norm.value})")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            with input_gradients_only(model):
                result = self.run(model, x, y, threat, objective or Misclassification(), gen)
        finally:
            model.train(was_training)
        return enforce(x, result.x_adv, threat).x_adv


def random_in_ball(x: torch.Tensor, threat: ThreatModel,
                   generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the eps-ball around ``x``, clamped to the bounds."""
    if threat.norm is Norm.linf:
        u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        delta = (2 * u - 1) * threat.eps
    else:
        d = x[0].numel()
        direction = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(
            -1, *([1] * (x.dim() - 1)))
        r = torch.rand((x.shape[0],), device=x.device, dtype=x.dtype, generator=generator)
        delta = direction * (threat.eps * r.pow(1.0 / d)).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(*threat.bounds)


def ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit norm for the threat's norm."""
    if norm is Norm.linf:
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / n.view(-1, *([1] * (grad.dim() - 1)))
