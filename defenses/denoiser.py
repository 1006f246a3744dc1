"""A learned denoiser in front of the model: ``model(denoiser(x))``.

The denoiser is a small DnCNN-style residual network (Zhang et al. 2017): it predicts the noise
and subtracts it. It is trained in the range to remove adversarial perturbations in the spirit
of the high-level-representation-guided denoiser (Liao et al. 2018): on PGD examples crafted
against the undefended target, its loss is the L1 distance between the target's logits on the
denoised adversarial image and on the clean image, plus an L1 pixel term that keeps clean images
unchanged. Weights are cached in the model zoo (content hash of the target's weights, the data,
the seed and the parameters); training shows progress and resumes per epoch.

The defended model is differentiable end to end, so the ordinary white-box rows already attack
the denoiser and the classifier together: they are the adaptive evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arange.attacks.base import Misclassification, check, input_gradients_only
from arange.attacks.pgd import PGD
from arange.data import load_dataset
from arange.models import load_weights
from arange.registry import register_defense
from arange.threat import Norm, ThreatModel
from arange.zoo import cached_weights, load_checkpoint, save_checkpoint

from .base import Defense, DefenseContext, eps_param

log = logging.getLogger(__name__)
FORMAT = 1


class DnCNN(nn.Module):
    """Residual denoiser: ``x - noise(x)``, clamped to [0, 1]."""

    def __init__(self, channels: int, width: int = 32, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.net(x)).clamp(0, 1)


class Denoised(nn.Module):
    def __init__(self, denoiser: nn.Module, model: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.denoiser(x))


@register_defense("denoiser", description="Learned DnCNN-style denoiser trained in the range on "
                  "adversarial examples (logit-guided loss, Liao et al. 2018); cached")
class Denoiser(Defense):
    trains = True

    def __init__(self, eps: Any = "8/255", epochs: int = 10, width: int = 32, depth: int = 5,
                 attack_steps: int = 10, lr: float = 1e-3, batch_size: int = 64):
        self.eps = eps_param(eps)
        for name, value, hi in (("epochs", epochs, 1000), ("width", width, 512),
                                ("depth", depth, 50), ("attack_steps", attack_steps, 1000),
                                ("batch_size", batch_size, 65536)):
            check(name, isinstance(value, int) and 1 <= value <= hi,
                  f"must be an integer in [1, {hi}] (got {value!r})")
        check("depth", depth >= 2, f"must be at least 2 (got {depth})")
        check("lr", isinstance(lr, (int, float)) and 0 < lr <= 1, f"must be in (0, 1] (got {lr})")
        self.epochs, self.width, self.depth = epochs, width, depth
        self.attack_steps, self.lr, self.batch_size = attack_steps, float(lr), batch_size

    def build(self, ctx: DefenseContext) -> nn.Module:
        spec = {"format": FORMAT, "method": "denoiser", "params": self.params(),
                "target_weights": ctx.weights_sha256, "model": ctx.model_name,
                "dataset": ctx.dataset, "dataset_options": ctx.dataset_options, "seed": ctx.seed}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        channels = int(load_dataset(ctx.dataset, "test", **ctx.dataset_options).channels)

        def train(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
            net = DnCNN(channels, self.width, self.depth).to(ctx.device)
            self._train(net, ctx, checkpoint)
            return net, {}

        zm = cached_weights(f"denoiser-{ctx.model_name}-{ctx.dataset}-{key[:16]}", train,
                            ctx.device, spec)
        net = DnCNN(channels, self.width, self.depth)
        load_weights(net, zm.path)
        ctx.info.update({"weights": f"zoo:{zm.path.name}", "weights_sha256": zm.sha256,
                         "train_seconds": zm.info.get("train_seconds"),
                         "train_device": zm.info.get("device"), "method": "denoiser"})
        return Denoised(net.to(ctx.device).eval(), ctx.model).eval()

    def _adversarial_set(self, ctx: DefenseContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean train images and PGD examples against the target at eps/2 and eps."""
        from tqdm.auto import tqdm

        data = load_dataset(ctx.dataset, "train", **ctx.dataset_options)
        x, y = data.x.to(ctx.device), data.y.to(ctx.device)
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        attack = PGD(steps=self.attack_steps, rel_stepsize=2.5 / self.attack_steps)
        clean, adv = [], []
        bar = tqdm(total=2 * len(data), desc="denoiser: crafting training examples",
                   disable=not ctx.progress, unit="img", leave=False)
        for eps in (self.eps / 2, self.eps):
            threat = ThreatModel(Norm.linf, eps)
            for i in range(0, len(data), 256):
                xb, yb = x[i:i + 256], y[i:i + 256]
                with input_gradients_only(ctx.model):
                    adv.append(attack.run(ctx.model, xb, yb, threat, Misclassification(),
                                          gen).x_adv.detach())
                clean.append(xb)
                bar.update(int(xb.shape[0]))
        bar.close()
        return torch.cat(clean), torch.cat(adv)

    def _train(self, net: nn.Module, ctx: DefenseContext, checkpoint: Path) -> None:
        from tqdm.auto import tqdm

        clean, adv = self._adversarial_set(ctx)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        parts = {"model": net, "opt": opt}
        start = load_checkpoint(checkpoint, parts, "denoiser training")
        n = clean.shape[0]
        steps = (n + self.batch_size - 1) // self.batch_size
        bar = tqdm(total=self.epochs * steps, initial=start * steps, desc="training denoiser",
                   disable=not ctx.progress, unit="batch", leave=False)
        with torch.no_grad():
            target_logits = torch.cat([ctx.model(clean[i:i + 512]) for i in range(0, n, 512)])
        ctx.model.eval()
        with input_gradients_only(ctx.model):
            for epoch in range(start, self.epochs):
                net.train()
                order = torch.randperm(n, generator=torch.Generator().manual_seed(
                    ctx.seed * 1000 + epoch)).to(clean.device)
                for i in range(steps):
                    idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                    guided = F.l1_loss(ctx.model(net(adv[idx])), target_logits[idx])
                    keep = F.l1_loss(net(clean[idx]), clean[idx])
                    loss = guided + 10.0 * keep
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
                if epoch + 1 < self.epochs:
                    save_checkpoint(checkpoint, parts, epoch + 1)
        bar.close()
        net.eval()
        if checkpoint.is_file():
            checkpoint.unlink()
