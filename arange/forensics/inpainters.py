"""Inpainters: the forgers of the range.

Each inpainter returns a fill for the whole image; :func:`inpaint` pastes it back only inside
the mask, so every pixel outside the mask is the real image's, bit for bit. Classical:
OpenCV's Telea (fast marching) and Navier-Stokes, scikit-image's biharmonic. Learned: a small
gated-convolution GAN (:mod:`.gan`) trained here on the training photographs and cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from arange.errors import ParamError, int_param
from arange.registry import Registry

from .data import random_crops, to_tensor, to_uint8
from .masks import make_masks

log = logging.getLogger(__name__)
INPAINTERS: Registry[Any] = Registry("inpainter")


@dataclass
class PrepareContext:
    """What a learned inpainter needs to train: the training images and mask settings."""

    train: np.ndarray            # uint8 (N, S, S, 3)
    data_fingerprint: str
    crop: int
    mask_kinds: tuple[str, ...]
    min_area: float
    max_area: float
    seed: int
    device: torch.device
    progress: bool = True


class Inpainter:
    kind: ClassVar[str] = "classical"

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        """Train or load what the inpainter needs; returns facts for the scorecard."""
        return {}

    def fill(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """uint8 NHWC images, bool NHW masks -> uint8 NHWC fills (used inside the mask only)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def inpaint(inpainter: Inpainter, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Forge ``images``: the inpainter's fill inside ``masks``, the real pixels elsewhere."""
    fill = inpainter.fill(images, masks)
    if fill.shape != images.shape or fill.dtype != np.uint8:
        raise RuntimeError(f"inpainter returned {fill.shape} {fill.dtype}, expected "
                           f"{images.shape} uint8")
    return np.where(masks[..., None], fill, images)


def _radius(radius: Any) -> int:
    if not isinstance(radius, int) or isinstance(radius, bool) or not 1 <= radius <= 32:
        raise ParamError("radius", f"must be an integer in [1, 32] (got {radius!r})")
    return radius


class _OpenCV(Inpainter):
    flag_name: ClassVar[str] = ""

    def __init__(self, radius: int = 3):
        self.radius = _radius(radius)

    def fill(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        import cv2
        flag = getattr(cv2, self.flag_name)
        out = np.empty_like(images)
        for i in range(len(images)):
            out[i] = cv2.inpaint(np.ascontiguousarray(images[i]),
                                 masks[i].astype(np.uint8), self.radius, flag)
        return out


@INPAINTERS.register("telea", description="OpenCV fast-marching inpainting (Telea 2004)")
class Telea(_OpenCV):
    flag_name = "INPAINT_TELEA"


@INPAINTERS.register("navier_stokes", description="OpenCV Navier-Stokes inpainting (Bertalmio "
                     "et al. 2001)")
class NavierStokes(_OpenCV):
    flag_name = "INPAINT_NS"


@INPAINTERS.register("biharmonic", description="scikit-image biharmonic inpainting")
class Biharmonic(Inpainter):
    def fill(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        from skimage.restoration import inpaint_biharmonic
        out = np.empty_like(images)
        for i in range(len(images)):
            f = inpaint_biharmonic(images[i], masks[i], channel_axis=-1)
            out[i] = np.clip(np.round(f * 255), 0, 255).astype(np.uint8)
        return out


@INPAINTERS.register("gan", description="small gated-convolution GAN inpainter with an "
                     "SN-PatchGAN discriminator, trained here and cached")
class GanInpainter(Inpainter):
    kind = "learned"

    def __init__(self, width: int = 12, epochs: int = 4, steps_per_epoch: int = 60,
                 batch_size: int = 16, lr: float = 2e-3, adv_weight: float = 0.1):
        self.width = int_param("width", width, 4, 128)
        self.epochs = int_param("epochs", epochs, 1, 10_000)
        self.steps_per_epoch = int_param("steps_per_epoch", steps_per_epoch, 1, 100_000)
        self.batch_size = int_param("batch_size", batch_size, 1, 4096)
        if not 0 < lr <= 1:
            raise ParamError("lr", f"must be in (0, 1] (got {lr!r})")
        if not 0 <= adv_weight <= 10:
            raise ParamError("adv_weight", f"must be in [0, 10] (got {adv_weight!r})")
        self.lr = float(lr)
        self.adv_weight = float(adv_weight)
        self._gen: torch.nn.Module | None = None
        self._device = torch.device("cpu")

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        from .gan import GatedGenerator, PatchDiscriminator, gan_step
        from .training import Trainer, train_cached

        torch.manual_seed(ctx.seed)
        gen = GatedGenerator(self.width).to(ctx.device)
        disc = PatchDiscriminator(self.width).to(ctx.device)
        opt_g = torch.optim.Adam(gen.parameters(), lr=self.lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.lr, betas=(0.5, 0.9))
        disc.train()

        def run_epoch(epoch: int, bar: Any) -> dict[str, float]:
            rng = np.random.default_rng([ctx.seed, 7, epoch])
            dl = gl = 0.0
            for _ in range(self.steps_per_epoch):
                x = to_tensor(random_crops(ctx.train, self.batch_size, ctx.crop, rng))
                m, _ = make_masks(self.batch_size, ctx.crop, ctx.crop, rng, ctx.mask_kinds,
                                  ctx.min_area, ctx.max_area)
                mt = torch.from_numpy(m)[:, None]
                dl, gl = gan_step(gen, disc, opt_g, opt_d, x.to(ctx.device),
                                  mt.to(ctx.device), self.adv_weight)
                bar.update(1)
            return {"d_loss": dl, "g_loss": gl}

        spec = {"inpainter": "gan", "params": self.params(), "data": ctx.data_fingerprint,
                "crop": ctx.crop, "masks": [list(ctx.mask_kinds), ctx.min_area, ctx.max_area],
                "seed": ctx.seed}
        trained = train_cached("gan-inpainter", spec, Trainer(
            gen, {"disc": disc, "opt_g": opt_g, "opt_d": opt_d}, self.epochs,
            self.steps_per_epoch, run_epoch), progress=ctx.progress,
            desc="training the GAN inpainter")
        self._gen = gen.eval()
        self._device = ctx.device
        return {"weights": trained.path.name, "sha256": trained.sha256,
                "train_seconds": trained.info.get("train_seconds"),
                "cached": trained.info.get("cached", False)}

    @torch.no_grad()
    def fill(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if self._gen is None:
            raise RuntimeError("the GAN inpainter is not prepared (call prepare first)")
        out = []
        for s in range(0, len(images), 64):
            x = to_tensor(images[s:s + 64]).to(self._device)
            m = torch.from_numpy(masks[s:s + 64])[:, None].to(self._device)
            out.append(to_uint8(self._gen(x, m)))
        return np.concatenate(out) if out else np.empty_like(images)


def forge_training_set(train: np.ndarray, inpainters: dict[str, Any], n: int, crop: int,
                       mask_kinds: tuple[str, ...], min_area: float, max_area: float,
                       real_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training patches (uint8 NHWC) and their masks (bool NHW): a ``real_fraction`` of
    them untouched (empty mask), the rest forged by the given inpainters in turn."""
    rng = np.random.default_rng([seed, 11])
    images = random_crops(train, n, crop, rng)
    masks, _ = make_masks(n, crop, crop, rng, mask_kinds, min_area, max_area)
    real = rng.random(n) < real_fraction
    masks[real] = False
    forged_idx = np.nonzero(~real)[0]
    names = sorted(inpainters)
    which = rng.integers(0, len(names), len(forged_idx))
    for j, name in enumerate(names):
        idx = forged_idx[which == j]
        if len(idx):
            images[idx] = inpaint(inpainters[name], images[idx], masks[idx])
    return images, masks
