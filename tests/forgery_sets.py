"""Small forgery test sets in the layouts the field uses, built from the bundled photographs with
real forgeries: OpenCV inpainting (Telea) inside a brush mask, and copy-move (a region of the
same photograph pasted over the mask's box). Images come in several sizes, as real sets do."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from arange.hashing.data import load_images

SIZES = [(96, 128), (128, 96), (112, 112), (144, 160), (96, 96), (128, 144)]


def _photos(n: int) -> list[np.ndarray]:
    base = load_images("embedded", image_size=160).images
    out = []
    for k in range(n):
        h, w = SIZES[k % len(SIZES)]
        out.append(np.ascontiguousarray(np.asarray(
            Image.fromarray(base[(7 * k) % len(base)]).resize((w, h)))))
    return out


def _mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    import cv2
    m = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
    for _ in range(4):
        y2 = int(np.clip(y + rng.integers(-h // 4, h // 4), 4, h - 5))
        x2 = int(np.clip(x + rng.integers(-w // 4, w // 4), 4, w - 5))
        cv2.line(m, (x, y), (x2, y2), 255, int(rng.integers(6, 12)))
        y, x = y2, x2
    return m > 0


def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2
    fill = cv2.inpaint(image, mask.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
    out = image.copy()
    out[mask] = fill[mask]
    return out


def copy_move(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    bh, bw = h // 4, w // 4
    y, x = int(rng.integers(0, h // 2 - bh)), int(rng.integers(0, w // 2 - bw))
    ty, tx = int(rng.integers(h // 2, h - bh)), int(rng.integers(w // 2, w - bw))
    out = image.copy()
    out[ty:ty + bh, tx:tx + bw] = image[y:y + bh, x:x + bw]
    mask = np.zeros((h, w), bool)
    mask[ty:ty + bh, tx:tx + bw] = True
    return out, mask


def build(root: Path, tampered: int = 6, authentic: int = 3, seed: int = 0
          ) -> list[tuple[str, str | None, str]]:
    """Write a CASIA-style folder (``Tp/``, ``Gt/`` with ``_gt`` masks, ``Au/``), an
    IMDL-BenCo JSON list (``test.json``) and a manifest (``manifest.csv``) of the same images.
    Returns (image, mask or None, source) relative to ``root``."""
    rng = np.random.default_rng(seed)
    for sub in ("Tp", "Gt", "Au"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    photos = _photos(tampered + authentic)
    entries: list[tuple[str, str | None, str]] = []
    for k in range(tampered):
        img = photos[k]
        if k % 2 == 0:
            mask = _mask(*img.shape[:2], rng)
            forged, name, source = inpaint(img, mask), f"Tp_D_inpaint{k:02d}", "inpainting"
        else:
            forged, mask = copy_move(img, rng)
            name, source = f"Tp_S_copymove{k:02d}", "copy-move"
        Image.fromarray(forged).save(root / "Tp" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "Gt" / f"{name}_gt.png")
        entries.append((f"Tp/{name}.png", f"Gt/{name}_gt.png", source))
    for k in range(authentic):
        name = f"Au_{k:02d}.png"
        Image.fromarray(photos[tampered + k]).save(root / "Au" / name)
        entries.append((f"Au/{name}", None, "authentic"))
    (root / "test.json").write_text(json.dumps(
        [[img, mask if mask is not None else "Negative"] for img, mask, _ in entries]))
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "source"])
        for img, mask, source in entries:
            w.writerow([img, mask or "", source])
    return entries
