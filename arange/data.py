"""Datasets: float NCHW images in [0, 1] with integer labels.

Built in:

* ``digits`` - scikit-learn's bundled handwritten digits (8x8, 1797 images), upsampled to 32x32 and
  quantised to the uint8 grid, with a fixed seeded stratified train/test split. Needs no files.
* ``cifar10`` - torchvision's CIFAR-10 loader over a local ``root`` (downloads only with
  ``download: true``).
* ``imagefolder`` - torchvision's ImageFolder over a local ``root`` (``root/<class>/<image>``, or
  ``root/train`` and ``root/test`` holding such folders).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, ParamError

# What torchvision's ImageFolder reads (its IMG_EXTENSIONS).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
from .registry import register_dataset

SPLITS = ("train", "test")
_SPLIT_SEED = 0  # the train/test split and sample order never depend on the scenario seed


@dataclass
class ImageDataset:
    """Images (float32 NCHW in [0, 1]) and labels, plus what a model needs to fit them."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int | None) -> ImageDataset:
        """The first ``n`` samples (the order is already a fixed shuffle)."""
        if n is None or n >= len(self):
            return self
        return ImageDataset(self.name, self.split, self.x[:n], self.y[:n], self.num_classes,
                            self.mean, self.std, self.class_names)

    def fingerprint(self) -> str:
        """sha256 over the uint8-quantised pixels and the labels."""
        h = hashlib.sha256()
        h.update(f"{self.name}:{self.split}:{tuple(self.x.shape)}".encode())
        h.update((self.x * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(self.y.to(torch.int64).numpy().tobytes())
        return h.hexdigest()


def load_dataset(name: str, split: str = "test", **options: Any) -> ImageDataset:
    from .registry import DATASETS
    if split not in SPLITS:
        raise ParamError("split", f"must be one of {', '.join(SPLITS)} (got {split!r})")
    return DATASETS.create(name, **options)(split)  # type: ignore[no-any-return]


def _fixed_order(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    return torch.randperm(n, generator=g)


# ---------------------------------------------------------------------------- digits

@register_dataset("digits", description="scikit-learn's bundled handwritten digits, 1x32x32, "
                  "10 classes, fixed 80/20 split (embedded, no files needed)")
class Digits:
    def __init__(self, image_size: int = 32, test_fraction: float = 0.2):
        if not 8 <= image_size <= 256:
            raise ParamError("image_size", f"must be between 8 and 256 (got {image_size})")
        if not 0.05 <= test_fraction <= 0.5:
            raise ParamError("test_fraction", f"must be in [0.05, 0.5] (got {test_fraction})")
        self.image_size = image_size
        self.test_fraction = test_fraction

    def __call__(self, split: str) -> ImageDataset:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = bunch.images.astype(np.float32) / 16.0
        labels = bunch.target.astype(np.int64)
        idx_train, idx_test = train_test_split(
            np.arange(len(labels)), test_size=self.test_fraction, random_state=_SPLIT_SEED,
            stratify=labels)
        idx = idx_train if split == "train" else idx_test
        x = torch.from_numpy(images[idx]).unsqueeze(1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)
        x = (x.clamp(0, 1) * 255).round() / 255  # as if stored as 8-bit images
        y = torch.from_numpy(labels[idx])
        mean, std = 0.305, 0.324  # measured on the train split, rounded
        return ImageDataset("digits", split, x.contiguous(), y, 10, (mean,), (std,),
                            [str(i) for i in range(10)])


# ---------------------------------------------------------------------------- cifar10

def _to_tensor_dataset(ds: Any, name: str, split: str, num_classes: int, mean: tuple[float, ...],
                       std: tuple[float, ...], classes: list[str],
                       limit: int | None = None) -> ImageDataset:
    order = _fixed_order(len(ds))
    if limit is not None:
        order = order[:limit]
    xs, ys = [], []
    for i in order.tolist():
        img, label = ds[i]
        xs.append(img)
        ys.append(int(label))
    if not xs:
        raise DataError(f"{name} {split} split is empty")
    return ImageDataset(name, split, torch.stack(xs).contiguous(),
                        torch.tensor(ys, dtype=torch.int64), num_classes, mean, std, classes)


def _local_root(root: str | None, name: str) -> Path:
    if not root:
        raise ParamError("root", f"{name} needs a local 'root' folder")
    path = Path(root).expanduser()
    return path


@register_dataset("cifar10", description="CIFAR-10 from a local root via torchvision "
                  "(python pickled batches; download only if download: true)")
class Cifar10:
    def __init__(self, root: str, download: bool = False, limit: int | None = None):
        self.root = _local_root(root, "cifar10")
        self.download = bool(download)
        if limit is not None and limit < 1:
            raise ParamError("limit", f"must be >= 1 (got {limit})")
        self.limit = limit

    def __call__(self, split: str) -> ImageDataset:
        from torchvision import datasets, transforms
        try:
            ds = datasets.CIFAR10(str(self.root), train=(split == "train"),
                                  download=self.download, transform=transforms.ToTensor())
        except RuntimeError as e:
            raise DataError(
                f"cifar10: no valid CIFAR-10 data under {self.root} ({e}); point 'root' at the "
                "folder that holds cifar-10-batches-py, or set download: true") from e
        return _to_tensor_dataset(ds, "cifar10", split, 10, (0.4914, 0.4822, 0.4465),
                                  (0.2470, 0.2435, 0.2616), list(ds.classes), self.limit)


# ---------------------------------------------------------------------------- imagefolder

@register_dataset("imagefolder", description="your images from a local folder via torchvision "
                  "ImageFolder (root/<class>/*.png, optionally root/train and root/test)")
class ImageFolderData:
    def __init__(self, root: str, image_size: int = 32, channels: int = 3,
                 limit: int | None = None):
        self.root = _local_root(root, "imagefolder")
        if not self.root.is_dir():
            raise ParamError("root", f"{self.root} is not a folder (imagefolder reads "
                             "root/<class>/<image>)")
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for _, _, names in
                   os.walk(self.root, followlinks=False) for f in map(Path, names)):
            raise ParamError("root", f"{self.root} holds no image files "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        if not 8 <= image_size <= 1024:
            raise ParamError("image_size", f"must be between 8 and 1024 (got {image_size})")
        if channels not in (1, 3):
            raise ParamError("channels", f"must be 1 or 3 (got {channels})")
        if limit is not None and limit < 1:
            raise ParamError("limit", f"must be >= 1 (got {limit})")
        self.image_size, self.channels, self.limit = image_size, channels, limit

    def __call__(self, split: str) -> ImageDataset:
        from torchvision import datasets, transforms
        root = self.root / split if (self.root / split).is_dir() else self.root
        if split == "train" and root == self.root and (self.root / "test").is_dir():
            raise DataError(f"imagefolder: {self.root} has test/ but no train/ folder")
        if not root.is_dir():
            raise DataError(f"imagefolder: {root} is not a folder")
        steps: list[Any] = [transforms.Resize((self.image_size, self.image_size))]
        if self.channels == 1:
            steps.append(transforms.Grayscale(1))
        steps.append(transforms.ToTensor())
        try:
            ds = datasets.ImageFolder(str(root), transform=transforms.Compose(steps),
                                      loader=_rgb_loader)
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"imagefolder: cannot read {root}: {e}") from e
        if self.channels == 3:
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            mean, std = (0.449,), (0.226,)
        return _to_tensor_dataset(ds, "imagefolder", split, len(ds.classes), mean, std,
                                  list(ds.classes), self.limit)


def _rgb_loader(path: str) -> Any:
    """An image as RGB; a file that is not a decodable image (corrupt, truncated, a
    decompression bomb) is one error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"imagefolder: cannot read {path}: {e}") from e
