"""The defense interface.

A defense turns the target model into a defended model. Three families exist:

- input transformations (:mod:`.transforms`): ``model(transform(x))``;
- learned preprocessors trained in the range (:mod:`.denoiser`): ``model(denoiser(x))``;
- hardened models trained in the range (:mod:`.adv_training`): other weights, same architecture.

Each defense declares whether its forward pass is ``differentiable`` and whether it is
``randomized``. The runner uses these flags to add adaptive attack rows: BPDA (a straight-through
gradient) for non-differentiable transformations and EOT (expectation over the randomness) for
randomised ones, next to the ordinary rows, so a scorecard shows the naive and the adaptive
number side by side (Athalye et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from arange.errors import ParamError
from arange.expr import parse_number
from arange.registry import register_defense


def eps_param(value: Any, name: str = "eps") -> float:
    """A budget parameter of a defense (e.g. the eps adversarial training uses), given as a
    number or a safe expression such as ``8/255``; must lie in (0, 1]."""
    try:
        eps = parse_number(value)
    except (TypeError, ValueError) as e:
        raise ParamError(name, f"must be a number such as 8/255; {e}") from e
    if not 0 < eps <= 1:
        raise ParamError(name, f"must be in (0, 1] (got {value!r})")
    return eps


@dataclass
class DefenseContext:
    """What a defense may need to build itself: the target's recipe, data and device.

    ``model`` is the undefended target (eval mode, on ``device``); defenses must not modify it.
    """

    model: nn.Module
    model_name: str
    model_params: dict[str, Any]
    dataset: str
    dataset_options: dict[str, Any]
    recipe: Any                      # arange.zoo.Recipe of the target
    weights_sha256: str              # of the target's weights
    seed: int
    device: torch.device
    progress: bool = True
    info: dict[str, Any] = field(default_factory=dict)  # the defense writes its provenance here


class Defense:
    """Base class: parameters at construction (cheap, no training), the model at :meth:`build`."""

    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    # Builds a model in the range (cached): `arange train` builds these ahead of a run.
    trains: ClassVar[bool] = False
    # Replaces the target by a model it trains from the target's recipe (registry models only).
    retrains_target: ClassVar[bool] = False

    def build(self, ctx: DefenseContext) -> nn.Module:
        """The defended model (eval mode). Training, if any, happens here (cached)."""
        return self.wrap(ctx.model)

    def wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def adaptive(self, defended: nn.Module) -> nn.Module | None:
        """The model adaptive attacks differentiate (BPDA/EOT), or None if none is needed."""
        return None

    @property
    def adaptive_method(self) -> str | None:
        """``"bpda"``, ``"eot"``, ``"bpda+eot"`` or None, from the declared flags; None too when
        the defense offers no adaptive view (then only the checks can flag its rows)."""
        if type(self).adaptive is Defense.adaptive:
            return None
        parts = ([] if self.differentiable else ["bpda"]) + (["eot"] if self.randomized else [])
        return "+".join(parts) or None

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@register_defense("none", description="No defense: the target model as it is")
class NoDefense(Defense):
    def wrap(self, model: nn.Module) -> nn.Module:
        return model
