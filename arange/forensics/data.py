"""Images for the forensics range: the hash range's embedded photographs (or an image folder),
split by photograph into training and test images, and the forgery sets made from them.

The split is by source photograph (the part of the image id before ``:``), so crops of one
photograph never sit on both sides. Test images are non-overlapping ``crop`` x ``crop`` tiles of
the test photographs' images; training patches are random crops (with flips) of the training
images. Real and forged images share size, uint8 format and every processing step: a forgery is
its real image with the inpainter's fill pasted inside the mask, rounded to uint8 like the real
one, so the only difference a detector can learn is the fill itself.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arange.errors import DataError
from arange.hashing.data import load_images


@dataclass
class Split:
    train: np.ndarray            # uint8 (N, S, S, 3): whole training images
    test: np.ndarray             # uint8 (M, c, c, 3): test tiles
    train_ids: list[str]
    test_ids: list[str]
    crop: int
    info: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.train, self.test):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(self.train_ids + ["|"] + self.test_ids).encode())
        return h.hexdigest()


def _group(image_id: str) -> str:
    return image_id.split(":")[0]


def load_split(dataset: str, options: dict[str, Any], crop: int, test_fraction: float,
               test_images: int | None, seed: int) -> Split:
    data = load_images(dataset, **options)
    size = data.image_size
    if size[0] < crop or size[1] < crop:
        raise DataError(f"{dataset}: images are {size[0]}x{size[1]}, smaller than the crop "
                        f"{crop}; raise dataset.options.image_size or lower crop")
    groups = sorted({_group(i) for i in data.ids})
    if len(groups) < 2:
        raise DataError(f"{dataset}: needs images from at least 2 sources to split into "
                        f"training and test (got {len(groups)})")
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_test = min(len(groups) - 1, max(1, math.ceil(test_fraction * len(groups))))
    test_groups = set(order[:n_test])
    tr = [i for i, name in enumerate(data.ids) if _group(name) not in test_groups]
    te = [i for i, name in enumerate(data.ids) if _group(name) in test_groups]
    tiles, tile_ids = [], []
    for i in te:
        img = data.images[i]
        for y in range(0, size[0] - crop + 1, crop):
            for x in range(0, size[1] - crop + 1, crop):
                tiles.append(img[y:y + crop, x:x + crop])
                tile_ids.append(f"{data.ids[i]}@{y},{x}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(tiles))
    if test_images is not None:
        perm = np.sort(perm[:test_images])
    test = np.ascontiguousarray(np.stack([tiles[j] for j in perm]))
    return Split(train=np.ascontiguousarray(data.images[tr]), test=test,
                 train_ids=[data.ids[i] for i in tr], test_ids=[tile_ids[j] for j in perm],
                 crop=crop,
                 info={"dataset": dataset, "dataset_fingerprint": data.fingerprint(),
                       "image_size": list(size), "test_sources": sorted(test_groups),
                       "train_sources": sorted(set(groups) - test_groups),
                       "train_images": len(tr), "test_tiles": len(test)})


def random_crops(images: np.ndarray, n: int, crop: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """``n`` random ``crop`` x ``crop`` patches (uint8 NHWC) with random flips."""
    idx = rng.integers(0, len(images), n)
    h, w = images.shape[1:3]
    ys = rng.integers(0, h - crop + 1, n)
    xs = rng.integers(0, w - crop + 1, n)
    out = np.empty((n, crop, crop, 3), dtype=np.uint8)
    flips = rng.integers(0, 4, n)
    for k in range(n):
        p = images[idx[k], ys[k]:ys[k] + crop, xs[k]:xs[k] + crop]
        if flips[k] & 1:
            p = p[:, ::-1]
        if flips[k] & 2:
            p = p[::-1]
        out[k] = p
    return out


def to_tensor(images: np.ndarray) -> Any:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: Any) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (rounded)."""
    import torch
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu() \
        .numpy()
