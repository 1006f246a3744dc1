"""Adversarial training: hardened weights for the target's architecture, built in the range.

- ``pgd_at``: PGD adversarial training (Madry et al. 2018): every batch is replaced by the last
  iterate of an L-inf PGD that maximises the loss (random start, ``steps`` steps).
- ``fast_at``: "Fast is better than free" (Wong et al. 2020): one FGSM step of size
  ``1.25 * eps`` from a uniform random start.

Both use the target's training recipe (epochs, batch size, learning rate, augmentation) on the
dataset's train split, train from scratch (``init: scratch``) or fine-tune the target's weights
(``init: target``), and are cached in the model zoo by a content hash of recipe + data + seed +
defense parameters (+ the target's weights for ``init: target``). Training shows progress,
resumes per epoch when interrupted, and its wall time is kept in the scorecard's provenance.
The training attacks are the range's own attacks (:mod:`arange.attacks`), run in full
precision even when ``bf16`` speeds up the weight updates on CUDA.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from arange.attacks.base import Attack, Misclassification, check
from arange.attacks.fgsm import FGSM
from arange.attacks.pgd import PGD
from arange.data import load_dataset
from arange.models import load_weights
from arange.registry import register_defense
from arange.threat import Norm, ThreatModel
from arange.zoo import cached_weights, new_model, train_classifier

from .base import Defense, DefenseContext, eps_param

FORMAT = 1


class _MaximiseLoss(Misclassification):
    """Cross-entropy ascent that never stops early: the attack returns its last iterate."""

    def success(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)


class AdversarialTraining(Defense):
    trains: ClassVar[bool] = True
    retrains_target: ClassVar[bool] = True
    method: ClassVar[str] = ""

    def __init__(self, eps: Any = "8/255", init: str = "scratch", bf16: bool = False,
                 epochs: int | None = None):
        self.eps = eps_param(eps)
        check("epochs", epochs is None or (isinstance(epochs, int) and 1 <= epochs <= 1000),
              f"must be an integer in [1, 1000] or left out for the target's recipe "
              f"(got {epochs!r})")
        self.epochs = epochs
        check("init", init in ("scratch", "target"),
              f"must be 'scratch' or 'target' (got {init!r})")
        check("bf16", isinstance(bf16, bool), "must be true or false")
        self.init = init
        self.bf16 = bf16

    def attack(self) -> Attack:
        raise NotImplementedError

    def recipe(self, ctx: DefenseContext) -> Any:
        """The target's training recipe, with this defense's epochs if it sets them."""
        return ctx.recipe if self.epochs is None else replace(ctx.recipe, epochs=self.epochs)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
        dev_gen = torch.Generator(device=x.device).manual_seed(seed)
        threat = ThreatModel(Norm.linf, self.eps)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            adv = self.attack().run(model, x, y, threat, _MaximiseLoss(), dev_gen).x_adv
        finally:
            for p in params:
                p.requires_grad_(True)
        return adv.detach()

    def build(self, ctx: DefenseContext) -> nn.Module:
        spec = {"format": FORMAT, "method": self.method, "params": self.params(),
                "model": ctx.model_name, "model_params": ctx.model_params,
                "dataset": ctx.dataset, "dataset_options": ctx.dataset_options,
                "recipe": asdict(self.recipe(ctx)), "seed": ctx.seed,
                "init": ctx.weights_sha256 if self.init == "target" else "scratch"}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

        def train(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
            data = load_dataset(ctx.dataset, "train", **ctx.dataset_options)
            torch.manual_seed(ctx.seed)
            net = new_model(ctx.model_name, ctx.model_params, data)
            if self.init == "target":
                net.load_state_dict(ctx.model.state_dict())
            train_classifier(net, data, self.recipe(ctx), ctx.seed, ctx.device, ctx.progress,
                             checkpoint=checkpoint, perturb=self.perturb, bf16=self.bf16,
                             desc=f"{self.method} {ctx.model_name} on {ctx.dataset}")
            return net, {}

        zm = cached_weights(f"{ctx.model_name}-{ctx.dataset}-{self.method}-{key[:16]}", train,
                            ctx.device, spec, evaluate_on=(ctx.dataset, ctx.dataset_options))
        data = load_dataset(ctx.dataset, "test", **ctx.dataset_options)
        net = new_model(ctx.model_name, ctx.model_params, data)
        load_weights(net, zm.path)
        ctx.info.update({"weights": f"zoo:{zm.path.name}", "weights_sha256": zm.sha256,
                         "train_seconds": zm.info.get("train_seconds"),
                         "test_accuracy": zm.info.get("test_accuracy"),
                         "train_device": zm.info.get("device"), "method": self.method})
        return net.to(ctx.device).eval()


@register_defense("pgd_at", description="PGD adversarial training (Madry et al. 2018): "
                  "hardened weights trained in the range and cached")
class PGDAdversarialTraining(AdversarialTraining):
    method = "pgd_at"

    def __init__(self, eps: Any = "8/255", steps: int = 7, rel_stepsize: float = 0.25,
                 epochs: int | None = None, init: str = "scratch", bf16: bool = False):
        super().__init__(eps, init, bf16, epochs)
        check("steps", isinstance(steps, int) and 1 <= steps <= 1000,
              f"must be an integer in [1, 1000] (got {steps!r})")
        check("rel_stepsize", isinstance(rel_stepsize, (int, float)) and 0 < rel_stepsize <= 2,
              f"must be in (0, 2] (got {rel_stepsize!r})")
        self.steps = steps
        self.rel_stepsize = float(rel_stepsize)

    def attack(self) -> Attack:
        return PGD(steps=self.steps, rel_stepsize=self.rel_stepsize, random_start=True)


@register_defense("fast_at", description="Fast adversarial training (Wong et al. 2020): FGSM "
                  "with random start, step 1.25 eps; hardened weights cached")
class FastAdversarialTraining(AdversarialTraining):
    method = "fast_at"

    def __init__(self, eps: Any = "8/255", rel_stepsize: float = 1.25,
                 epochs: int | None = None, init: str = "scratch", bf16: bool = False):
        super().__init__(eps, init, bf16, epochs)
        check("rel_stepsize", isinstance(rel_stepsize, (int, float)) and 0 < rel_stepsize <= 2,
              f"must be in (0, 2] (got {rel_stepsize!r})")
        self.rel_stepsize = float(rel_stepsize)

    def attack(self) -> Attack:
        return FGSM(random_start=True, rel_stepsize=self.rel_stepsize)
