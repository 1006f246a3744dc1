"""Forgery detectors: a per-pixel forgery logit map and an image score read off the map.

``noise_residual``: a multi-scale network whose stem looks at noise residuals rather than image
content, after Zhou et al. (RGB-N) and Bayar & Stamm:

* fixed SRM high-pass filters (the three rich-model kernels, on every colour channel) with a
  smooth truncation ``3 tanh(r / 3)`` on the 8-bit scale;
* a Bayar constrained convolution (centre weight -1, the others summing to 1; the constraint is
  applied in the forward pass, so it always holds);
* an RGB stem beside them.

The stems are fused at full resolution, three residual stages (strides 2, 4, 8) follow, their
features are upsampled and fused, and the logits come back to full resolution with a full-
resolution skip. The image logit is the mean of the top ``topk`` fraction of pixel logits.
``residual_stem: false`` gives the ablation: the same network with the RGB stem only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arange.errors import ParamError, int_param
from arange.registry import Registry

DETECTORS: Registry[Any] = Registry("detector")

_KV = [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
       [-1, 2, -2, 2, -1]]
_SQ3 = [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]
_EDGE = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def srm_kernels() -> torch.Tensor:
    """(9, 1, 5, 5): the three SRM kernels for each of the three colour channels."""
    ks = [torch.tensor(_KV) / 12.0, torch.tensor(_SQ3) / 4.0, torch.tensor(_EDGE) / 2.0]
    return torch.stack([k.float() for _ in range(3) for k in ks])[:, None]


class SRM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", srm_kernels())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.conv2d(x * 255.0, self.weight, padding=2, groups=3)
        return 3.0 * torch.tanh(r / 3.0)


class BayarConv(nn.Module):
    """Constrained convolution: each kernel predicts the centre pixel from its neighbours."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * 0.1)

    def constrained(self) -> torch.Tensor:
        c = self.k // 2
        centre = torch.zeros_like(self.weight)
        centre[:, :, c, c] = 1.0
        w = self.weight * (1 - centre)
        s = w.sum(dim=(2, 3), keepdim=True)
        s = torch.where(s.abs() < 1e-3, torch.full_like(s, 1e-3) * torch.sign(s + 1e-12), s)
        return w / s - centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x * 255.0, self.constrained(), padding=self.k // 2)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, c: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


@DETECTORS.register("noise_residual", description="multi-scale detector with SRM, Bayar and "
                    "RGB stems (residual_stem: false for the RGB-only ablation)")
class NoiseResidualNet(nn.Module):
    def __init__(self, width: int = 16, residual_stem: bool = True, blocks: int = 1,
                 topk: float = 0.02):
        super().__init__()
        self.width = int_param("width", width, 4, 256)
        self.blocks = int_param("blocks", blocks, 1, 8)
        if not isinstance(residual_stem, bool):
            raise ParamError("residual_stem", f"must be true or false (got {residual_stem!r})")
        if not 0 < topk <= 1:
            raise ParamError("topk", f"must be in (0, 1] (got {topk!r})")
        self.residual_stem = residual_stem
        self.topk = float(topk)
        w = width
        self.rgb = nn.Conv2d(3, w, 3, padding=1)
        stem_in = w
        if residual_stem:
            self.srm = SRM()
            self.bayar = BayarConv(3, 6)
            self.res_stem = nn.Sequential(nn.BatchNorm2d(15), nn.Conv2d(15, w, 3, padding=1))
            stem_in += w
        self.fuse = nn.Sequential(nn.BatchNorm2d(stem_in), nn.ReLU(inplace=True),
                                  nn.Conv2d(stem_in, w, 1), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True))
        self.stage1 = nn.Sequential(_conv_bn(w, 2 * w, 2), *[ResBlock(2 * w)
                                                               for _ in range(blocks)])
        self.stage2 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), *[ResBlock(4 * w)
                                                                   for _ in range(blocks)])
        self.stage3 = nn.Sequential(_conv_bn(4 * w, 4 * w, 2), *[ResBlock(4 * w, 2)
                                                                   for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(10 * w, 2 * w, 1), nn.BatchNorm2d(2 * w),
                                  nn.ReLU(inplace=True))
        self.out = nn.Conv2d(3 * w, 1, 3, padding=1)

    def config(self) -> dict[str, Any]:
        return {"width": self.width, "residual_stem": self.residual_stem,
                "blocks": self.blocks, "topk": self.topk}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW in [0, 1] -> pixel logits N x 1 x H x W."""
        feats = [self.rgb(x * 2 - 1)]
        if self.residual_stem:
            feats.append(self.res_stem(torch.cat([self.srm(x), self.bayar(x)], dim=1)))
        f0 = self.fuse(torch.cat(feats, dim=1))
        s1 = self.stage1(f0)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        size = s1.shape[-2:]
        h = self.head(torch.cat([s1, F.interpolate(s2, size=size, mode="bilinear",
                                                   align_corners=False),
                                 F.interpolate(s3, size=size, mode="bilinear",
                                               align_corners=False)], dim=1))
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(torch.cat([f0, h], dim=1))

    def image_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """Image logit from the map: the mean of the top ``topk`` fraction of pixel logits."""
        flat = logits.flatten(1)
        k = max(1, round(self.topk * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)


def build_detector(name: str, params: dict[str, Any]) -> NoiseResidualNet:
    return DETECTORS.create(name, **params)  # type: ignore[no-any-return]
