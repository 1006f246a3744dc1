"""The defense interface."""

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from arange.registry import register_defense


class Defense:
    """Turns a model into a defended model.

    ``differentiable`` and ``randomized`` tell the runner which adaptive attacks are needed
    (BPDA for non-differentiable transformations, EOT for randomised ones).
    """

    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    def wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError


@register_defense("none", description="No defense: the target model as it is")
class NoDefense(Defense):
    def wrap(self, model: nn.Module) -> nn.Module:
        return model
