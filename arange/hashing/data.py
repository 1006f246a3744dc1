"""Images for the hash range: an embedded set of natural photographs and users' own folders.

``embedded``: photographs bundled inside the scikit-image wheel (the ``skimage.data`` images that
need no download) and scikit-learn's two sample photographs. From each photograph the set takes
a planned list of square crops (the whole centre square, four corner crops at 60% of the short
side, a centre crop at 45%), resized to ``image_size`` with Pillow's LANCZOS. Crops of one
photograph overlap by at most 36% of the larger crop. Near copies are then removed greedily: an
image is dropped when its reference pHash is within ``dedupe_phash`` bits or its PDQ within
``dedupe_pdq`` bits of an image already kept (the stereo pair in scikit-image is one such near
copy). Nothing is downloaded; the result is identical on every machine with the same library
versions (its fingerprint is recorded in the scorecard).

``imagefolder``: every image file under ``root`` (sorted by path), converted to RGB, centre
cropped to a square and resized to ``image_size``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arange.errors import DataError, ParamError
from arange.registry import Registry

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass
class HashImages:
    """uint8 RGB images (N, H, W, 3) with a name for each, plus how they were made."""

    name: str
    images: np.ndarray
    ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, n: int | None) -> HashImages:
        if n is None or n >= len(self):
            return self
        return HashImages(self.name, self.images[:n], self.ids[:n], dict(self.info))

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Float NCHW in [0, 1] (exactly on the 8-bit grid)."""
        x = torch.from_numpy(np.array(self.images)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous().to(device)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}:{self.images.shape}".encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()


HASH_DATASETS: Registry[Any] = Registry("hash dataset")


def _check_size(image_size: Any) -> int:
    if not isinstance(image_size, int) or isinstance(image_size, bool) \
            or not 32 <= image_size <= 1024:
        raise ParamError("image_size", f"must be an integer between 32 and 1024 "
                         f"(got {image_size!r})")
    return image_size


def _check_limit(limit: Any) -> int | None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 2):
        raise ParamError("limit", f"must be an integer >= 2 (got {limit!r})")
    return limit  # type: ignore[no-any-return]


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _package_dir(package: str) -> Path:
    """A package's folder, found without importing it (scikit-learn's import is slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"embedded: the package {package!r} is not installed; "
                        f"pip install scikit-image scikit-learn")
    return Path(next(iter(spec.submodule_search_locations)))


# The photographs: (name, package, file inside the package). scikit-image's are the files behind
# skimage.data.astronaut(), camera(), ... that ship inside its wheel; scikit-learn's are the files
# behind sklearn.datasets.load_sample_images().
PHOTOGRAPHS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"), ("camera", "skimage", "data/camera.png"),
    ("coffee", "skimage", "data/coffee.png"), ("chelsea", "skimage", "data/chelsea.png"),
    ("rocket", "skimage", "data/rocket.jpg"), ("hubble", "skimage", "data/hubble_deep_field.jpg"),
    ("ihc", "skimage", "data/ihc.png"), ("retina", "skimage", "data/retina.jpg"),
    ("moon", "skimage", "data/moon.png"), ("coins", "skimage", "data/coins.png"),
    ("clock", "skimage", "data/clock_motion.png"), ("page", "skimage", "data/page.png"),
    ("text", "skimage", "data/text.png"), ("brick", "skimage", "data/brick.png"),
    ("grass", "skimage", "data/grass.png"), ("gravel", "skimage", "data/gravel.png"),
    ("cell", "skimage", "data/cell.png"),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    ("motorcycle_right", "skimage", "data/motorcycle_right.png"),
    ("microaneurysms", "skimage", "data/microaneurysms.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)


def _read_photograph(package: str, rel: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    path = _package_dir(package) / rel
    try:
        with Image.open(path) as im:
            return _rgb(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"embedded: cannot read the bundled image {path}: {e}; reinstall "
                        f"{'scikit-image' if package == 'skimage' else 'scikit-learn'}") from e


# (name, side as a fraction of the short side, vertical position, horizontal position); positions
# are fractions of the free space (0 = top/left, 1 = bottom/right).
CROPS: tuple[tuple[str, float, float, float], ...] = (
    ("full", 1.0, 0.5, 0.5),
    ("tl", 0.6, 0.0, 0.0), ("tr", 0.6, 0.0, 1.0), ("bl", 0.6, 1.0, 0.0), ("br", 0.6, 1.0, 1.0),
    ("center", 0.45, 0.5, 0.5),
)


def _crop_resize(a: np.ndarray, side_frac: float, py: float, px: float, size: int) -> np.ndarray:
    from PIL import Image
    h, w = a.shape[:2]
    side = max(1, round(min(h, w) * side_frac))
    y = round((h - side) * py)
    x = round((w - side) * px)
    crop = Image.fromarray(a[y:y + side, x:x + side], "RGB")
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


@HASH_DATASETS.register("embedded", description="natural photographs bundled with scikit-image "
                        "and scikit-learn: distinct crops, near copies removed (no download)")
class Embedded:
    def __init__(self, image_size: int = 128, limit: int | None = None,
                 dedupe_phash: int = 4, dedupe_pdq: int = 16):
        self.image_size = _check_size(image_size)
        self.limit = _check_limit(limit)
        for key, v, hi in (("dedupe_phash", dedupe_phash, 64), ("dedupe_pdq", dedupe_pdq, 256)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ParamError(key, f"must be an integer in [0, {hi}] (got {v!r})")
        self.dedupe_phash = dedupe_phash
        self.dedupe_pdq = dedupe_pdq

    def __call__(self) -> HashImages:
        data = _build_embedded(self.image_size, self.dedupe_phash, self.dedupe_pdq)
        return data.subset(self.limit)


@lru_cache(maxsize=4)
def _build_embedded(image_size: int, dedupe_phash: int, dedupe_pdq: int) -> HashImages:
    """Built once per process and parameters (the arrays are read-only)."""
    from .reference import hamming, reference_bits

    images: list[np.ndarray] = []
    ids: list[str] = []
    kept_p: list[np.ndarray] = []
    kept_q: list[np.ndarray] = []
    dropped: list[str] = []
    for name, package, rel in PHOTOGRAPHS:
        photo = _read_photograph(package, rel)
        small = min(photo.shape[:2]) < 2 * image_size
        for crop, frac, py, px in CROPS:
            if small and crop != "full":
                continue  # too small for distinct crops at this size
            im = _crop_resize(photo, frac, py, px, image_size)
            p = reference_bits("phash", im)
            q = reference_bits("pdq", im)
            if kept_p and (int(hamming(np.stack(kept_p), p[None]).min()) <= dedupe_phash
                           or int(hamming(np.stack(kept_q), q[None]).min()) <= dedupe_pdq):
                dropped.append(f"{name}:{crop}")
                continue
            images.append(im)
            ids.append(f"{name}:{crop}")
            kept_p.append(p)
            kept_q.append(q)
    if dropped:
        log.info("embedded images: dropped %d near copies (%s)", len(dropped),
                 ", ".join(dropped))
    arr = np.stack(images)
    arr.flags.writeable = False
    return HashImages("embedded", arr, ids,
                      {"dropped_near_copies": dropped, "dedupe_phash": dedupe_phash,
                       "dedupe_pdq": dedupe_pdq, "image_size": image_size,
                       "photographs": len(PHOTOGRAPHS)})


@HASH_DATASETS.register("imagefolder", description="your images: every image file under a local "
                        "root, centre-cropped and resized to image_size")
class ImageFolderImages:
    def __init__(self, root: str, image_size: int = 128, limit: int | None = None):
        if not root:
            raise ParamError("root", "imagefolder needs a local 'root' folder")
        self.root = Path(root).expanduser()
        self.image_size = _check_size(image_size)
        self.limit = _check_limit(limit)

    def __call__(self) -> HashImages:
        from PIL import Image, UnidentifiedImageError
        if not self.root.is_dir():
            raise DataError(f"imagefolder: {self.root} is not a folder")
        files = image_files(self.root)
        if self.limit is not None:
            files = files[:self.limit]
        if len(files) < 2:
            raise DataError(f"imagefolder: {self.root} holds {len(files)} image file(s) "
                            f"({', '.join(IMAGE_SUFFIXES)}); the range needs at least 2")
        images, ids = [], []
        for f in files:
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (OSError, ValueError, UnidentifiedImageError,
                    Image.DecompressionBombError) as e:
                raise DataError(f"imagefolder: cannot read {f}: {e}") from e
            images.append(_crop_resize(a, 1.0, 0.5, 0.5, self.image_size))
            ids.append(str(f.relative_to(self.root)))
        return HashImages("imagefolder", np.stack(images), ids,
                          {"root": str(self.root), "image_size": self.image_size})


def image_files(root: Path) -> list[Path]:
    """Image files under ``root``, sorted; symlinked folders are not entered (no loops), and
    links that lead nowhere are left out."""
    import os

    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in names:
            p = Path(folder) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                found.append(p)
    return sorted(found)


def load_images(name: str, **options: Any) -> HashImages:
    return HASH_DATASETS.create(name, **options)()  # type: ignore[no-any-return]
