"""Input-transformation defenses: ``model(transform(x))``.

Every transform maps a batch in [0, 1] (N x C x H x W) to a batch of the same shape in [0, 1].

Gradients, as a naive attacker sees them: a differentiable transform (median, random resizing,
noise) passes autograd's gradient; a non-differentiable one (JPEG, bit-depth reduction, TV
minimisation) has a true gradient of zero almost everywhere (its output is piecewise constant in
the input, or is computed outside autograd), so the naive model's input gradient is zero. That is
the obfuscated-gradient effect the adaptive rows expose: BPDA replaces the transform's backward
pass with the identity (a straight-through estimator, Athalye et al. 2018) and EOT averages the
model over the transform's randomness.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arange.attacks.base import check
from arange.registry import register_defense

from .base import Defense


class InputTransform(Defense):
    """A defense that transforms the input before the model; subclasses implement ``apply``."""

    eot_samples: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        return TransformedModel(model, self, adaptive=False)

    def adaptive(self, defended: nn.Module) -> nn.Module | None:
        if self.adaptive_method is None:
            return None
        base = defended.model if isinstance(defended, TransformedModel) else defended
        return TransformedModel(base, self, adaptive=True)


class TransformedModel(nn.Module):
    """``model(transform(x))``; ``adaptive=True`` gives the BPDA/EOT view attacks differentiate.

    The naive view of a non-differentiable transform has zero input gradient (see the module
    docstring). The adaptive view of a randomised transform averages the logits of
    ``eot_samples`` independent draws (EOT); of a non-differentiable one, uses the transform's
    output in the forward pass and the identity in the backward pass (BPDA).
    """

    def __init__(self, model: nn.Module, transform: InputTransform, adaptive: bool):
        super().__init__()
        self.model = model
        self.transform = transform
        self.adaptive = adaptive

    def _transformed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform
        if t.differentiable:
            return t.apply(x)
        with torch.no_grad():
            y = t.apply(x.detach())
        zero = x - x.detach()  # exactly 0, with the identity as its gradient
        if self.adaptive:  # BPDA: forward exactly y, backward the identity
            return y + zero
        return y + zero * 0.0  # the true (zero) gradient, still connected to x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.transform.eot_samples if (self.adaptive and self.transform.randomized) else 1
        if k == 1:
            return self.model(self._transformed(x))
        out = self.model(self._transformed(x))
        for _ in range(k - 1):
            out = out + self.model(self._transformed(x))
        return out / k


def _check_eot(eot_samples: Any) -> None:
    check("eot_samples", isinstance(eot_samples, int) and 1 <= eot_samples <= 1000,
          f"must be an integer in [1, 1000] (got {eot_samples!r})")


@register_defense("jpeg", description="JPEG compression and decompression (Pillow); "
                  "non-differentiable: adaptive rows use BPDA")
class JPEG(InputTransform):
    differentiable = False

    def __init__(self, quality: int = 75):
        check("quality", isinstance(quality, int) and 1 <= quality <= 100,
              f"must be an integer in [1, 100] (got {quality!r})")
        self.quality = quality

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        out = np.empty_like(arr)
        for i, img in enumerate(arr):
            pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else \
                Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            dec = np.asarray(Image.open(buf).convert(pil.mode))
            out[i] = dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1)
        return torch.from_numpy(out).to(x.device, x.dtype) / 255.0


@register_defense("bit_depth", description="Bit-depth reduction (feature squeezing, Xu et al. "
                  "2018); non-differentiable: adaptive rows use BPDA")
class BitDepth(InputTransform):
    differentiable = False

    def __init__(self, bits: int = 4):
        check("bits", isinstance(bits, int) and 1 <= bits <= 8,
              f"must be an integer in [1, 8] (got {bits!r})")
        self.bits = bits

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels


@register_defense("median", description="Median smoothing (spatial smoothing, Xu et al. 2018); "
                  "differentiable almost everywhere, so ordinary attacks are adaptive")
class Median(InputTransform):
    def __init__(self, size: int = 3):
        check("size", isinstance(size, int) and size >= 1 and size % 2 == 1 and size <= 15,
              f"must be an odd integer in [1, 15] (got {size!r})")
        self.size = size

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        r = self.size // 2
        n, c, h, w = x.shape
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        patches = padded.unfold(2, self.size, 1).unfold(3, self.size, 1)
        return patches.reshape(n, c, h, w, -1).median(dim=-1).values


@register_defense("tv", description="Total-variation denoising (Chambolle, scikit-image; "
                  "Guo et al. 2018); non-differentiable: adaptive rows use BPDA")
class TotalVariation(InputTransform):
    differentiable = False

    def __init__(self, weight: float = 0.1, max_iter: int = 50):
        check("weight", isinstance(weight, (int, float)) and 0 < weight <= 10,
              f"must be a number in (0, 10] (got {weight!r})")
        check("max_iter", isinstance(max_iter, int) and 1 <= max_iter <= 10_000,
              f"must be an integer in [1, 10000] (got {max_iter!r})")
        self.weight = float(weight)
        self.max_iter = max_iter

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        from skimage.restoration import denoise_tv_chambolle

        arr = x.detach().clamp(0, 1).cpu().numpy().astype(np.float64)
        out = np.stack([denoise_tv_chambolle(img, weight=self.weight, max_num_iter=self.max_iter,
                                             channel_axis=0) for img in arr])
        return torch.from_numpy(out).to(x.device, x.dtype).clamp(0, 1)


@register_defense("random_resize_pad", description="Random resizing and padding (Xie et al. "
                  "2018); randomised: adaptive rows use EOT")
class RandomResizePad(InputTransform):
    """Resize each image to a random size in [H, scale*H], pad it at a random offset to
    scale*H, and resize back to H (so any model accepts it)."""

    randomized = True

    def __init__(self, scale: float = 1.25, eot_samples: int = 8):
        check("scale", isinstance(scale, (int, float)) and 1 < scale <= 2,
              f"must be a number in (1, 2] (got {scale!r})")
        _check_eot(eot_samples)
        self.scale = float(scale)
        self.eot_samples = eot_samples

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        big = round(h * self.scale)
        sizes = torch.randint(h, big + 1, (n,)).tolist()
        out = torch.empty(n, c, big, big, dtype=x.dtype, device=x.device)
        for s in sorted(set(sizes)):
            idx = [i for i, v in enumerate(sizes) if v == s]
            resized = F.interpolate(x[idx], size=(s, s), mode="bilinear", align_corners=False)
            for j, i in enumerate(idx):
                top, left = torch.randint(0, big - s + 1, (2,)).tolist()
                padded = F.pad(resized[j:j + 1], (left, big - s - left, top, big - s - top))
                out[i:i + 1] = padded
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


@register_defense("gaussian_noise", description="Additive Gaussian noise at inference "
                  "(randomised smoothing without certification); adaptive rows use EOT")
class GaussianNoise(InputTransform):
    randomized = True

    def __init__(self, sigma: float = 0.1, eot_samples: int = 8):
        check("sigma", isinstance(sigma, (int, float)) and 0 < sigma <= 1,
              f"must be a number in (0, 1] (got {sigma!r})")
        _check_eot(eot_samples)
        self.sigma = float(sigma)
        self.eot_samples = eot_samples

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)
