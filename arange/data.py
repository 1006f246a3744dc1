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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core.safeio import short
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


def resize_crop(data: ImageDataset, resize: int | None, crop: int | None) -> ImageDataset:
    """``data`` with its shorter side resized to ``resize`` (bilinear, antialiased) and a
    centre crop of ``crop`` (default: ``resize``), re-quantised to the 8-bit grid."""
    x = data.x
    side = resize or crop
    if side is not None and min(x.shape[-2:]) != side:
        h, w = x.shape[-2:]
        size = (side, max(1, round(w * side / h))) if h <= w else \
            (max(1, round(h * side / w)), side)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    c = crop or side
    if c is not None:
        h, w = x.shape[-2:]
        top, left = (h - c) // 2, (w - c) // 2
        x = x[..., top:top + c, left:left + c]
    x = (x.clamp(0, 1) * 255).round() / 255
    return replace(data, x=x.contiguous())


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
    def __init__(self, image_size: int = 32, test_fraction: float = 0.2, channels: int = 1):
        if not 8 <= image_size <= 256:
            raise ParamError("image_size", f"must be between 8 and 256 (got {image_size})")
        if not 0.05 <= test_fraction <= 0.5:
            raise ParamError("test_fraction", f"must be in [0.05, 0.5] (got {test_fraction})")
        if channels not in (1, 3):
            raise ParamError("channels", f"must be 1 or 3 (got {channels})")
        self.image_size = image_size
        self.test_fraction = test_fraction
        self.channels = channels  # 3: the grey image repeated, for models that take RGB

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
        x = x.expand(-1, self.channels, -1, -1)
        return ImageDataset("digits", split, x.contiguous(), y, 10, (mean,) * self.channels,
                            (std,) * self.channels, [str(i) for i in range(10)])


# ---------------------------------------------------------------------------- cifar10

def _to_tensor_dataset(ds: Any, name: str, split: str, num_classes: int, mean: tuple[float, ...],
                       std: tuple[float, ...], classes: list[str],
                       limit: int | None = None, stratify: bool = False) -> ImageDataset:
    """The first ``limit`` samples of the fixed order (with ``stratify``: taken from each
    class in turn, using the labels the dataset knows without decoding), decoded: only those
    files are read (in batches, by DataLoader workers when there are many)."""
    order = _fixed_order(len(ds))
    if limit is not None and stratify:
        order = _stratified(order, list(ds.targets), limit)
    elif limit is not None:
        order = order[:limit]
    if len(order) == 0:
        raise DataError(f"{name} {split} split is empty")
    from torch.utils.data import DataLoader, Subset

    workers = min(4, os.cpu_count() or 1) if len(order) >= 512 else 0
    loader = DataLoader(Subset(ds, order.tolist()), batch_size=64, num_workers=workers,
                        shuffle=False)
    x: torch.Tensor | None = None  # filled in place: memory is the images, not twice that
    y = torch.empty(len(order), dtype=torch.int64)
    start = 0
    try:
        for images, labels in loader:
            if x is None:
                x = torch.empty((len(order), *images.shape[1:]), dtype=images.dtype)
            x[start:start + len(images)] = images
            y[start:start + len(images)] = torch.as_tensor(labels, dtype=torch.int64)
            start += len(images)
    except DataError as e:  # from a worker: its message ends with the original one
        raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
    assert x is not None
    return ImageDataset(name, split, x, y, num_classes, mean, std, classes)


def _stratified(order: torch.Tensor, labels: list[int], limit: int) -> torch.Tensor:
    """``limit`` indices taking each class in turn, each class in the fixed order."""
    queues: dict[int, list[int]] = {}
    for i in order.tolist():
        queues.setdefault(int(labels[i]), []).append(i)
    lists = [queues[c][::-1] for c in sorted(queues)]
    picked: list[int] = []
    while len(picked) < limit and any(lists):
        for q in lists:
            if q and len(picked) < limit:
                picked.append(q.pop())
    return torch.tensor(picked, dtype=torch.long)


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
                 limit: int | None = None, resize: int | None = None, crop: int | None = None,
                 stratify: bool = False):
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
        for name, v in (("resize", resize), ("crop", crop)):
            if v is not None and not 8 <= v <= 4096:
                raise ParamError(name, f"must be between 8 and 4096 (got {v})")
        if resize is not None and crop is not None and crop > resize:
            raise ParamError("crop", f"must be <= resize ({resize}) (got {crop})")
        self.image_size, self.channels, self.limit = image_size, channels, limit
        # resize: the shorter side, keeping the aspect ratio, then a centre crop (default: a
        # square of the shorter side); without them every image is resized to image_size
        self.resize, self.crop = resize, crop
        self.stratify = bool(stratify)  # samples taken from each class in turn

    def __call__(self, split: str) -> ImageDataset:
        from torchvision import datasets
        root = self.root / split if (self.root / split).is_dir() else self.root
        if split == "train" and root == self.root and (self.root / "test").is_dir():
            raise DataError(f"imagefolder: {self.root} has test/ but no train/ folder")
        if not root.is_dir():
            raise DataError(f"imagefolder: {root} is not a folder")
        try:
            ds = datasets.ImageFolder(str(root), transform=self.transform(),
                                      loader=_rgb_loader)
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"imagefolder: cannot read {root}: {e}") from e
        mean, std = _imagenet_stats(self.channels)
        return _to_tensor_dataset(ds, "imagefolder", split, len(ds.classes), mean, std,
                                  list(ds.classes), self.limit, self.stratify)

    def transform(self) -> Any:
        """Decoding: resize to image_size (or to ``resize`` then crop), grey if asked."""
        from torchvision import transforms

        steps: list[Any] = [transforms.Resize((self.image_size, self.image_size))]
        if self.resize is not None or self.crop is not None:
            side = self.resize or self.crop
            steps = [transforms.Resize(side), transforms.CenterCrop(self.crop or side)]
        if self.channels == 1:
            steps.append(transforms.Grayscale(1))
        steps.append(transforms.ToTensor())
        return transforms.Compose(steps)


def _imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == 3:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return (0.449,), (0.226,)


# ---------------------------------------------------------------------------- manifest

@register_dataset("manifest", description="your images listed in a CSV (path,label) or JSON "
                  "file ([[path, label], ...] or [{path, label}, ...]); paths relative to it")
class ManifestData(ImageFolderData):
    def __init__(self, path: str, image_size: int = 32, channels: int = 3,
                 limit: int | None = None, resize: int | None = None, crop: int | None = None,
                 stratify: bool = False):
        file = Path(path).expanduser()
        if not file.is_file():
            raise ParamError("path", f"{file} is not a file (a manifest lists path,label rows)")
        self.file = file
        self.entries = _read_manifest(file)
        folder = file.parent
        super().__init__(str(folder), image_size, channels, limit, resize, crop, stratify)

    def __call__(self, split: str) -> ImageDataset:
        if split != "test":
            raise DataError(f"manifest {self.file}: lists evaluation images only (no train "
                            "split); the zoo cannot train on it")
        labels = [label for _, label in self.entries]
        if all(isinstance(v, int) for v in labels):
            classes = [str(i) for i in range(max(labels) + 1)]  # type: ignore[call-overload]
            index = labels
        else:
            classes = sorted({str(v) for v in labels})
            index = [classes.index(str(v)) for v in labels]
        files = [self.file.parent / p for p, _ in self.entries]
        ds = _Files(files, index, self.transform())
        mean, std = _imagenet_stats(self.channels)
        return _to_tensor_dataset(ds, "manifest", split, len(classes), mean, std, classes,
                                  self.limit, self.stratify)


class _Files:
    """Images listed by path with their labels, decoded on access."""

    def __init__(self, files: list[Path], labels: list[Any], transform: Any):
        self.files, self.targets, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(_rgb_loader(str(self.files[i]))), int(self.targets[i])


def _read_manifest(file: Path) -> list[tuple[str, Any]]:
    """(relative path, label) rows of a CSV (header ``path,label``) or JSON manifest; labels are
    class names, or integers (class indices)."""
    import csv
    import json

    text = file.read_text(encoding="utf-8")
    rows: list[Any]
    if file.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParamError("path", f"{file}: not valid JSON ({e.msg} at line {e.lineno})"
                             ) from e
        if not isinstance(rows, list):
            raise ParamError("path", f"{file}: a JSON manifest is a list of [path, label]")
        rows = [[r.get("path"), r.get("label")] if isinstance(r, dict) else r for r in rows]
    else:
        reader = csv.reader(text.splitlines())
        rows = list(reader)
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
            rows = rows[1:]
    out: list[tuple[str, Any]] = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, list) or len(row) != 2 or not isinstance(row[0], str) \
                or not row[0]:
            raise ParamError("path", f"{file}: row {n} is not path,label")
        label = row[1]
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label == "":
            raise ParamError("path", f"{file}: row {n}: the label must be a class name or index")
        rel = Path(row[0])
        if rel.is_absolute() or ".." in rel.parts:
            raise ParamError("path", f"{file}: row {n}: paths are relative to the manifest's "
                             f"folder and stay inside it (got {short(row[0], 60)})")
        out.append((row[0], label))
    if not out:
        raise ParamError("path", f"{file} lists no images")
    return out


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
