"""Example images for the galleries: reading ``examples/<job_id>.npz`` and making pictures.

Classification examples (written by :func:`arange.classification.runner.examples_npz`) hold ``index``,
``clean`` and ``adv`` (uint8, NCHW), ``label``, ``clean_pred``, ``adv_pred`` and, from runs that
record them, ``clean_prob`` / ``adv_prob`` (float, N x classes: softmax of the target on the
clean and on the evaluated adversarial image). The hash and forensics galleries read the arrays
listed at the top of :mod:`.hash_view` and :mod:`.forensics_view`.

Everything is numpy; ``np.load(..., allow_pickle=False)`` so a crafted file cannot run code.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import RunDataError

MIN_DISPLAY = 128  # small images (digits are 32x32) are scaled up, pixel for pixel


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunDataError(f"{path}: the example images file is missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise RunDataError(f"{path}: the example images file is damaged ({e}); run the "
                           "scenario again to rewrite it") from e


def to_display(img: np.ndarray, min_size: int = MIN_DISPLAY) -> np.ndarray:
    """A CHW/HW image (uint8 or float in [0, 1]) as HW or HWC uint8, scaled up if small."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4):  # CHW, as runs save them
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3):
        raise RunDataError(f"cannot show an image of shape {img.shape}")
    scale = max(1, -(-min_size // max(1, min(a.shape[0], a.shape[1]))))
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    return np.ascontiguousarray(a)


def amplified_perturbation(clean: np.ndarray, adv: np.ndarray) -> tuple[np.ndarray, float]:
    """``adv - clean`` stretched around mid-grey so the largest change fills the range.

    Returns the uint8 image (same layout as the inputs) and the amplification factor.
    """
    diff = adv.astype(np.int32) - clean.astype(np.int32)
    peak = int(np.abs(diff).max())
    if peak == 0:
        return np.full(clean.shape, 128, dtype=np.uint8), 1.0
    factor = 127.0 / peak
    out = np.clip(np.round(128 + diff * factor), 0, 255).astype(np.uint8)
    return out, factor


def _gray(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=0) if a.shape[0] in (1, 3, 4) else a.mean(axis=-1)
    return a


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions only)."""
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Structural similarity of two uint8 images (grey, uniform 7x7 windows, as in scikit-image
    with ``use_sample_covariance=False``). 1.0 means identical."""
    x, y = _gray(a), _gray(b)
    if x.shape != y.shape:
        raise RunDataError(f"SSIM needs images of the same size, got {x.shape} and {y.shape}")
    k = min(window, x.shape[0], x.shape[1])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box(x, k), _box(y, k)
    vx = _box(x * x, k) - mx * mx
    vy = _box(y * y, k) - my * my
    cov = _box(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def mask_image(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[0]
    return np.where(m > 0.5 if m.dtype.kind == "f" else m > 0, 255, 0).astype(np.uint8)


def overlay(image: np.ndarray, score: np.ndarray, mask: np.ndarray | None = None,
            alpha: float = 0.55) -> np.ndarray:
    """The detector's map (red, by score) over the image, with the true mask's edge in green."""
    base = to_display(image, min_size=1).astype(np.float64)
    if base.ndim == 2:
        base = np.stack([base] * 3, axis=-1)
    s = np.asarray(score, dtype=np.float64)
    if s.ndim == 3:
        s = s[0]
    if s.shape != base.shape[:2]:
        raise RunDataError(f"the detector map ({s.shape}) and the image ({base.shape[:2]}) "
                           "differ in size")
    s = np.clip(s, 0.0, 1.0)[..., None]
    red = np.zeros_like(base)
    red[..., 0] = 255
    out = base * (1 - alpha * s) + red * (alpha * s)
    if mask is not None:
        m = mask_image(mask) > 0
        if m.shape == s.shape[:2]:
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) &
                         np.roll(m, -1, 1))
            out[edge] = (0, 220, 0)
    return np.clip(out, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class ClassificationExample:
    index: int
    clean: np.ndarray
    adv: np.ndarray
    perturbation: np.ndarray
    factor: float
    label: int
    clean_pred: int
    adv_pred: int
    clean_conf: float | None    # p(clean_pred | clean image)
    adv_conf: float | None      # p(adv_pred | adversarial image)
    adv_true_conf: float | None  # p(label | adversarial image)

    @property
    def evaded(self) -> bool:
        return self.adv_pred != self.label


_CLASSIFICATION_KEYS = ("index", "clean", "adv", "label", "clean_pred", "adv_pred")


def classification_examples(arrays: dict[str, np.ndarray],
                            source: str = "examples") -> list[ClassificationExample]:
    missing = [k for k in _CLASSIFICATION_KEYS if k not in arrays]
    if missing:
        raise RunDataError(f"{source}: the example file lacks {', '.join(missing)}")
    n = len(arrays["index"])
    if any(len(arrays[k]) != n for k in _CLASSIFICATION_KEYS):
        raise RunDataError(f"{source}: the example arrays have different lengths")
    cp, ap = arrays.get("clean_prob"), arrays.get("adv_prob")

    def prob(p: Any, i: int, cls: int) -> float | None:
        if p is None or p.ndim != 2 or p.shape[0] != n or not 0 <= cls < p.shape[1]:
            return None
        return float(p[i, cls])

    out = []
    for i in range(n):
        pert, factor = amplified_perturbation(arrays["clean"][i], arrays["adv"][i])
        label, cpred, apred = (int(arrays[k][i]) for k in ("label", "clean_pred", "adv_pred"))
        out.append(ClassificationExample(
            index=int(arrays["index"][i]), clean=arrays["clean"][i], adv=arrays["adv"][i],
            perturbation=pert, factor=factor, label=label, clean_pred=cpred, adv_pred=apred,
            clean_conf=prob(cp, i, cpred), adv_conf=prob(ap, i, apred),
            adv_true_conf=prob(ap, i, label)))
    return out
