"""Forgery masks: free-form brush strokes (the DeepFill v2 recipe) and boxes.

Every mask covers between ``min_area`` and ``max_area`` of the image. A brush mask draws strokes
(a random walk of thick line segments with round joints, as in Yu et al., "Free-Form Image
Inpainting with Gated Convolution") until the covered fraction reaches a target drawn uniformly
from the range; a stroke that would overshoot the upper bound is redrawn thinner. A box mask is
one axis-aligned rectangle of a target area and a random aspect ratio. Masks are deterministic
given the random generator.
"""

from __future__ import annotations

import math

import numpy as np

from arange.errors import ParamError

MASK_KINDS = ("brush", "box")


def check_area(min_area: float, max_area: float) -> None:
    if not 0.0 < min_area < max_area < 1.0:
        raise ParamError("min_area", f"needs 0 < min_area < max_area < 1 (got {min_area:g}, "
                         f"{max_area:g})")


def _stroke(canvas: np.ndarray, rng: np.random.Generator, width_scale: float) -> None:
    import cv2

    h, w = canvas.shape
    size = min(h, w)
    vertices = int(rng.integers(4, 13))
    max_len = max(4.0, size / 4)
    max_width = max(2, round(size / 8 * width_scale))
    min_width = max(1, round(max_width / 3))
    y, x = float(rng.uniform(0, h)), float(rng.uniform(0, w))
    for j in range(vertices):
        angle = float(rng.uniform(0, 2 * math.pi))
        if j % 2 == 0:
            angle = 2 * math.pi - angle
        length = float(rng.uniform(max_len / 4, max_len))
        width = int(rng.integers(min_width, max_width + 1))
        ny = float(np.clip(y + length * math.sin(angle), 0, h - 1))
        nx = float(np.clip(x + length * math.cos(angle), 0, w - 1))
        cv2.line(canvas, (round(x), round(y)), (round(nx), round(ny)), 1, width)
        cv2.circle(canvas, (round(nx), round(ny)), max(1, width // 2), 1, -1)
        y, x = ny, nx


def brush_mask(h: int, w: int, rng: np.random.Generator, min_area: float = 0.05,
               max_area: float = 0.40) -> np.ndarray:
    """A free-form mask (bool H x W) covering a fraction in [min_area, max_area]."""
    check_area(min_area, max_area)
    target = float(rng.uniform(min_area, max_area))
    mask = np.zeros((h, w), dtype=np.uint8)
    scale = 1.0
    for _ in range(200):
        trial = mask.copy()
        _stroke(trial, rng, scale)
        area = float(trial.mean())
        if area > max_area:
            scale = max(0.2, scale * 0.7)  # overshoot: try a thinner stroke
            continue
        mask = trial
        if area >= target:
            break
    while mask.mean() < min_area:  # rare: fill with small discs until the floor is reached
        import cv2
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        cv2.circle(mask, (cx, cy), max(1, min(h, w) // 16), 1, -1)
        if mask.mean() > max_area:
            mask[:] = 0
    return mask.astype(bool)


def box_mask(h: int, w: int, rng: np.random.Generator, min_area: float = 0.05,
             max_area: float = 0.40) -> np.ndarray:
    """One rectangle (bool H x W) covering a fraction in [min_area, max_area]."""
    check_area(min_area, max_area)
    for _ in range(1000):
        area = float(rng.uniform(min_area, max_area)) * h * w
        ratio = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        bh = round(math.sqrt(area * ratio))
        bw = round(area / max(bh, 1))
        if not (1 <= bh <= h and 1 <= bw <= w):
            continue
        frac = bh * bw / (h * w)
        if not min_area <= frac <= max_area:
            continue
        y = int(rng.integers(0, h - bh + 1))
        x = int(rng.integers(0, w - bw + 1))
        mask = np.zeros((h, w), dtype=bool)
        mask[y:y + bh, x:x + bw] = True
        return mask
    raise ParamError("min_area", f"cannot place a box of {min_area:g}-{max_area:g} of a "
                     f"{h}x{w} image")


def make_masks(n: int, h: int, w: int, rng: np.random.Generator,
               kinds: tuple[str, ...] | list[str] = MASK_KINDS, min_area: float = 0.05,
               max_area: float = 0.40) -> tuple[np.ndarray, list[str]]:
    """``n`` masks (bool N x H x W), the kinds taking turns; returns the masks and their kinds."""
    for k in kinds:
        if k not in MASK_KINDS:
            raise ParamError("kinds", f"unknown mask kind {k!r} (available: "
                             f"{', '.join(MASK_KINDS)})")
    out = np.zeros((n, h, w), dtype=bool)
    names = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        fn = brush_mask if kind == "brush" else box_mask
        out[i] = fn(h, w, rng, min_area, max_area)
        names.append(kind)
    return out, names
