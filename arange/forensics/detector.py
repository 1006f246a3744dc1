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


# ---------------------------------------------------------------------------- brought detectors

class BroughtDetector(nn.Module):
    """A detector you bring, as the range sees every detector: float NCHW images in [0, 1] ->
    pixel logits N x 1 x H x W, and :meth:`image_logit` pooled from them.

    ``net`` gets the image after ``scale``, channel order and ``(x - mean) / std``; its output
    (a tensor, or the first of a tuple or list) is N x H' x W' or N x C x H' x W' (channel 0 is
    the forgery map), logits or probabilities (turned into logits), bilinearly upsampled to the
    input size when smaller."""

    def __init__(self, net: nn.Module, output: str = "logits", mean: list[float] | None = None,
                 std: list[float] | None = None, scale: float = 1.0, bgr: bool = False,
                 image_score: str = "topk", topk: float = 0.02):
        super().__init__()
        self.net = net
        self.output = output
        self.scale = float(scale)
        self.bgr = bool(bgr)
        self.image_score = image_score
        self.topk = float(topk)
        m = torch.tensor(mean if mean is not None else [0.0]).view(1, -1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0]).view(1, -1, 1, 1)
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def train(self, mode: bool = True) -> BroughtDetector:
        self.training = mode
        try:
            self.net.train(mode)
        except (AttributeError, NotImplementedError, RuntimeError):
            pass  # an exported program has no train mode; it is always evaluated as exported
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        v = x * self.scale
        if self.bgr:
            v = v.flip(1)
        out = self.net((v - self.mean) / self.std)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 3:
            out = out[:, None]
        if out.dim() != 4:
            raise ValueError(f"the detector returned a tensor of shape {tuple(out.shape)}; "
                             "expected one map per image (N x H x W or N x C x H x W)")
        out = out[:, :1].float()
        if self.output == "probabilities":
            p = out.clamp(1e-6, 1 - 1e-6)
            out = torch.log(p) - torch.log1p(-p)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def image_logit(self, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(1)
        if self.image_score == "max":
            return flat.max(dim=1).values
        if self.image_score == "mean":
            return flat.mean(dim=1)
        k = max(1, round(self.topk * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)


EXPORT_FORMATS = ("torchscript", "onnx", "export")


def export_detector(net: nn.Module, path: str, fmt: str, size: tuple[int, int]) -> str:
    """Write ``net`` (float NCHW in [0, 1] -> pixel logits) as a file a scenario can bring back
    (``model: <fmt>:<path>``): TorchScript (traced), ONNX (opset 17) or a ``torch.export``
    program, all taking any batch and image size. ``size``: the (height, width) of the example
    input. Returns the ``model:`` spelling."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    net = net.eval().cpu()
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(net, x).save(path)
        elif fmt == "onnx":
            axes = {0: "n", 2: "height", 3: "width"}
            torch.onnx.export(net, (x,), path, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes},
                              opset_version=17, dynamo=False)
        else:  # any batch size and image size (examples of 2: 1 would be specialised)
            dims = {0: torch.export.Dim("batch", min=1, max=65536),
                    2: torch.export.Dim("height", min=16, max=8192),
                    3: torch.export.Dim("width", min=16, max=8192)}
            prog = torch.export.export(net, (x.repeat(2, 1, 1, 1),), dynamic_shapes={"x": dims})
            torch.export.save(prog, path)
    return f"{fmt}:{path}"
