"""A small GAN inpainter trained here: gated convolutions (Yu et al., DeepFill v2) in a coarse
encoder / dilated bottleneck / decoder generator, and a spectral-normalised PatchGAN
discriminator with the hinge loss (SN-PatchGAN). No downloaded weights: it is trained on the
range's training photographs with the range's own masks and cached like the zoo models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedConv(nn.Module):
    """``ELU(features) * sigmoid(gate)``: the gate learns where the input is valid."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride, padding=dilation * (k // 2),
                              dilation=dilation)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.conv(x).chunk(2, dim=1)
        return (F.elu(f) if self.act else f) * torch.sigmoid(g)


class GatedGenerator(nn.Module):
    """(masked image, mask) -> RGB fill in [0, 1] for the whole image (pasted inside the mask
    by the caller)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            GatedConv(5, w, 5),
            GatedConv(w, 2 * w, 3, stride=2),
            GatedConv(2 * w, 2 * w, 3),
            GatedConv(2 * w, 4 * w, 3, stride=2),
            GatedConv(4 * w, 4 * w, 3, dilation=2),
            GatedConv(4 * w, 4 * w, 3, dilation=4),
            GatedConv(4 * w, 4 * w, 3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            GatedConv(4 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            GatedConv(2 * w, w, 3),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        inp = torch.cat([x * (1 - m), m, torch.ones_like(m)], dim=1)
        return torch.sigmoid(self.net(inp))


class PatchDiscriminator(nn.Module):
    """SN-PatchGAN: spectral-normalised strided convolutions, one score per patch."""

    def __init__(self, width: int = 16):
        super().__init__()
        sn = nn.utils.spectral_norm
        w = width
        layers: list[nn.Module] = []
        cin = 4
        for cout in (2 * w, 4 * w, 4 * w, 4 * w):
            layers += [sn(nn.Conv2d(cin, cout, 5, stride=2, padding=2)), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(sn(nn.Conv2d(cin, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, mask.float()], dim=1))


def composite(x: torch.Tensor, fill: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return x * (1 - m) + fill * m


def gan_step(gen: nn.Module, disc: nn.Module, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, x: torch.Tensor, mask: torch.Tensor,
             adv_weight: float = 0.1) -> tuple[float, float]:
    """One hinge-loss update of the discriminator then the generator; returns their losses."""
    fill = gen(x, mask)
    fake = composite(x, fill, mask)
    d_loss = F.relu(1 - disc(x, mask)).mean() + F.relu(1 + disc(fake.detach(), mask)).mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    m = mask.float()
    hole = (fill - x).abs().mul(m).sum() / m.sum().clamp_min(1.0) / 3
    valid = (fill - x).abs().mul(1 - m).mean()
    g_loss = hole + 0.5 * valid - adv_weight * disc(fake, mask).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return float(d_loss.detach()), float(g_loss.detach())
