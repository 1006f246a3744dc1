"""Your forgery test set, in the layouts the field uses, and the metrics the field reports.

Datasets (``target.dataset``):

* ``casia``: ``{root}/Tp/`` tampered images, ``{root}/Gt/`` their masks (matched by file stem,
  with or without a ``_gt`` / ``_mask`` suffix), ``{root}/Au/`` authentic images (optional).
  CASIA's ``Tp_S_`` / ``Tp_D_`` prefixes become the ``copy-move`` / ``splicing`` sources.
* ``imdl_json``: IMDL-BenCo's JSON list of ``[image, mask]`` pairs, the mask ``"Negative"`` for
  an authentic image; paths relative to the JSON file.
* ``forgery_manifest``: a CSV of ``image,mask[,source]`` rows (empty mask: authentic).

Masks are binarised at ``mask_threshold`` (of 255). A mask whose size differs from its image is
an error naming both files, unless ``resize_masks: true`` (nearest neighbour). Images keep their
size: each is scored whole, or in ``window`` x ``window`` tiles (overlapping by half, logits
averaged) when larger, so memory is bounded by the window, not the image.

Metrics, as IMDL-BenCo defines them, averaged per image over the tampered images: pixel F1 at
0.5 and at the best threshold shared by the set (optimistic: chosen on the test images), pixel
AUC and IoU; image level over all images: AUC, F1 and accuracy of the image score at 0.5.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arange.errors import DataError, ParamError

from . import metrics as M

EXTERNAL_DATASETS = ("casia", "imdl_json", "forgery_manifest")
NEGATIVE = "Negative"


@dataclass
class Item:
    id: str
    image: np.ndarray                  # uint8 (H, W, 3)
    mask: np.ndarray | None            # bool (H, W); None: authentic
    source: str = ""


@dataclass
class ForgerySet:
    name: str
    items: list[Item]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def forged(self) -> list[Item]:
        return [i for i in self.items if i.mask is not None]

    @property
    def authentic(self) -> list[Item]:
        return [i for i in self.items if i.mask is None]

    def fingerprint(self) -> str:
        import hashlib
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.id}|{it.source}|{it.image.shape}".encode())
            h.update(np.ascontiguousarray(it.image).tobytes())
            if it.mask is not None:
                h.update(np.packbits(it.mask).tobytes())
        return h.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _read_mask(path: Path, image: np.ndarray, image_path: Path, threshold: float,
               resize: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            m = im.convert("L")
            if m.size != (image.shape[1], image.shape[0]):
                if not resize:
                    raise DataError(
                        f"mask {path} is {m.size[0]}x{m.size[1]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]}; fix the files or set "
                        "target.dataset.options.resize_masks: true")
                m = m.resize((image.shape[1], image.shape[0]), Image.Resampling.NEAREST)
            a = np.asarray(m, dtype=np.uint8)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e
    return a > threshold * 255  # type: ignore[no-any-return]


def _check_options(mask_threshold: Any, limit: Any) -> None:
    if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) or \
            not 0 <= mask_threshold < 1:
        raise ParamError("mask_threshold", f"must be a number in [0, 1) (got {mask_threshold!r})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise ParamError("limit", f"must be an integer >= 2 (got {limit!r})")


class _Loader:
    def __init__(self, mask_threshold: float = 0.5, resize_masks: bool = False,
                 limit: int | None = None):
        _check_options(mask_threshold, limit)
        if not isinstance(resize_masks, bool):
            raise ParamError("resize_masks", f"must be true or false (got {resize_masks!r})")
        self.threshold, self.resize, self.limit = float(mask_threshold), resize_masks, limit

    def pairs(self) -> list[tuple[Path, Path | None, str, str]]:
        """(image, mask or None, id, source) in a fixed order."""
        raise NotImplementedError

    def __call__(self, name: str) -> ForgerySet:
        pairs = self.pairs()
        if self.limit is not None:
            pairs = pairs[:self.limit]
        items = []
        for img_path, mask_path, ident, source in pairs:
            image = _read_image(img_path)
            mask = None if mask_path is None else _read_mask(mask_path, image, img_path,
                                                             self.threshold, self.resize)
            items.append(Item(ident, image, mask, source))
        forged = sum(1 for i in items if i.mask is not None)
        if forged == 0:
            raise DataError(f"{name}: no tampered image with a mask; the range needs forgeries")
        empty = [i.id for i in items if i.mask is not None and not i.mask.any()]
        return ForgerySet(name, items, {
            "dataset": name, "tampered": forged, "authentic": len(items) - forged,
            "empty_masks": empty[:20], "n_empty_masks": len(empty),
            "sources": sorted({i.source for i in items if i.source}),
            "sizes": sorted({f"{i.image.shape[1]}x{i.image.shape[0]}" for i in items})[:20]})


def _images(folder: Path) -> list[Path]:
    from arange.hashing.data import IMAGE_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file()) if folder.is_dir() else []


def _casia_source(stem: str) -> str:
    return {"Tp_S": "copy-move", "Tp_D": "splicing"}.get(stem[:4], "tampered")


class Casia(_Loader):
    def __init__(self, root: str = "", **kw: Any):
        super().__init__(**kw)
        if not root:
            raise ParamError("root", "casia needs a local 'root' folder holding Tp/ and Gt/")
        self.root = Path(root).expanduser()

    def pairs(self) -> list[tuple[Path, Path | None, str, str]]:
        tp, gt, au = self.root / "Tp", self.root / "Gt", self.root / "Au"
        if not tp.is_dir() or not gt.is_dir():
            raise DataError(f"casia: {self.root} needs Tp/ (tampered images) and Gt/ (their "
                            "masks) folders")
        masks: dict[str, Path] = {}
        for m in _images(gt):
            stem = m.stem
            for suffix in ("_gt", "_mask", "_GT"):
                stem = stem.removesuffix(suffix)
            masks[stem] = m
        out: list[tuple[Path, Path | None, str, str]] = []
        missing = []
        for img in _images(tp):
            m = masks.get(img.stem)
            if m is None:
                missing.append(img.name)
                continue
            out.append((img, m, f"Tp/{img.name}", _casia_source(img.stem)))
        if missing:
            raise DataError(f"casia: {len(missing)} tampered image(s) in {tp} have no mask in "
                            f"{gt} (first: {missing[0]}; a mask is matched by file stem, "
                            "optionally with _gt or _mask)")
        out += [(img, None, f"Au/{img.name}", "authentic") for img in _images(au)]
        return out


class ImdlJson(_Loader):
    def __init__(self, path: str = "", **kw: Any):
        super().__init__(**kw)
        if not path:
            raise ParamError("path", "imdl_json needs the 'path' of a JSON list of [image, "
                             "mask] pairs")
        self.path = Path(path).expanduser()

    def pairs(self) -> list[tuple[Path, Path | None, str, str]]:
        from arange.core.safeio import load_json
        raw = load_json(self.path, "IMDL-BenCo JSON list")
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{self.path}: expected a non-empty JSON list of [image, mask] "
                            "pairs (mask \"Negative\" for an authentic image)")
        base = self.path.parent
        out: list[tuple[Path, Path | None, str, str]] = []
        for k, entry in enumerate(raw):
            if not (isinstance(entry, list) and len(entry) == 2 and
                    all(isinstance(v, str) for v in entry)):
                raise DataError(f"{self.path}: entry {k} must be [image, mask] (two strings), "
                                f"got {str(entry)[:80]}")
            img, mask = (base / entry[0]).resolve(), entry[1]
            for p in ([img] + ([] if mask == NEGATIVE else [(base / mask).resolve()])):
                if not p.is_file():
                    raise DataError(f"{self.path}: entry {k}: file {p} does not exist")
            neg = mask == NEGATIVE
            out.append((img, None if neg else (base / mask).resolve(), entry[0],
                        "authentic" if neg else "tampered"))
        return out


class ForgeryManifest(_Loader):
    def __init__(self, path: str = "", **kw: Any):
        super().__init__(**kw)
        if not path:
            raise ParamError("path", "forgery_manifest needs the 'path' of a CSV of "
                             "image,mask[,source] rows")
        self.path = Path(path).expanduser()

    def pairs(self) -> list[tuple[Path, Path | None, str, str]]:
        from arange.core.safeio import read_text
        text = read_text(self.path, "forgery manifest", 64 << 20)
        base = self.path.parent
        out: list[tuple[Path, Path | None, str, str]] = []
        for k, row in enumerate(csv.reader(text.splitlines())):
            if not row or (k == 0 and row[0].strip().lower() == "image"):
                continue
            if len(row) not in (2, 3):
                raise DataError(f"{self.path}: line {k + 1}: expected image,mask[,source]")
            img = (base / row[0].strip()).resolve()
            mask = row[1].strip()
            mp = (base / mask).resolve() if mask else None
            for p in [img] + ([mp] if mp is not None else []):
                if not p.is_file():
                    raise DataError(f"{self.path}: line {k + 1}: file {p} does not exist")
            source = row[2].strip() if len(row) == 3 else ("tampered" if mp else "authentic")
            out.append((img, mp, row[0].strip(), source))
        return out


LOADERS = {"casia": Casia, "imdl_json": ImdlJson, "forgery_manifest": ForgeryManifest}


def load_forgery_set(name: str, options: dict[str, Any]) -> ForgerySet:
    return LOADERS[name](**options)(name)


# ---------------------------------------------------------------------------- scoring

@torch.no_grad()
def score(net: Any, image: np.ndarray, device: torch.device, window: int | None
          ) -> tuple[np.ndarray, float]:
    """(probability map H x W, image score) of one uint8 image: whole, or by overlapping
    ``window`` tiles (logits averaged where they overlap) when the image is larger."""
    from .data import to_tensor
    h, w = image.shape[:2]
    if window is None or (h <= window and w <= window):
        logits = net(to_tensor(image[None]).to(device))
        return (torch.sigmoid(logits)[0, 0].cpu().numpy().astype(np.float32),
                float(torch.sigmoid(net.image_logit(logits))[0]))
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    step = max(1, window // 2)
    ys = sorted({*range(0, max(h - window, 0) + 1, step), max(h - window, 0)})
    xs = sorted({*range(0, max(w - window, 0) + 1, step), max(w - window, 0)})
    for y in ys:
        for x in xs:
            tile = image[y:y + window, x:x + window]
            lg = net(to_tensor(tile[None]).to(device))[0, 0].cpu().numpy()
            acc[y:y + tile.shape[0], x:x + tile.shape[1]] += lg
            cnt[y:y + tile.shape[0], x:x + tile.shape[1]] += 1
    logits_map = torch.from_numpy(acc / np.maximum(cnt, 1)).float()[None, None]
    return (torch.sigmoid(logits_map)[0, 0].numpy().astype(np.float32),
            float(torch.sigmoid(net.image_logit(logits_map))[0]))


def evaluate(maps: list[np.ndarray], masks: list[np.ndarray | None], scores: list[float],
             sources: list[str]) -> dict[str, Any]:
    """The metrics of one condition: pixel metrics per tampered image, averaged; image metrics
    over every image; per-source means of the pixel F1 and AUC."""
    forged = [i for i, m in enumerate(masks) if m is not None]
    f1, iou, auc = [], [], []
    for i in forged:
        m = masks[i]
        assert m is not None
        pred = maps[i] >= 0.5
        f1.append(M.f1_score(pred, m))
        iou.append(M.iou_score(pred, m))
        a = M.roc_auc(maps[i], m)
        auc.append(np.nan if a is None else a)
    thr, f1_best = _best_shared_threshold([maps[i] for i in forged],
                                          [masks[i] for i in forged])
    labels = np.array([m is not None for m in masks])
    s = np.asarray(scores, np.float64)
    pred_img = s >= 0.5
    per_source: dict[str, dict[str, Any]] = {}
    for src in sorted({sources[i] for i in forged}):
        idx = [k for k, i in enumerate(forged) if sources[i] == src]
        per_source[src] = {"n": len(idx), "pixel_f1": _mean([f1[k] for k in idx]),
                           "pixel_auc": _mean([auc[k] for k in idx])}
    return {
        "n_tampered": len(forged), "n_authentic": int((~labels).sum()),
        "pixel_f1": _mean(f1), "pixel_f1_ci": M.bootstrap_mean(np.array(f1)),
        "pixel_f1_best": round(f1_best, 5), "best_threshold": thr,
        "pixel_auc": _mean(auc), "pixel_auc_images": int(np.isfinite(auc).sum()),
        "iou": _mean(iou),
        "image_auc": _r(M.roc_auc(s, labels)),
        "image_f1": round(M.f1_score(pred_img, labels), 5),
        "image_accuracy": round(float((pred_img == labels).mean()), 5) if len(s) else 0.0,
        "per_source": per_source,
        "_per_image": {"pixel_f1": [round(v, 5) for v in f1], "score": [round(v, 5)
                                                                        for v in scores]}}


def _best_shared_threshold(maps: list[np.ndarray], masks: list[np.ndarray | None]
                           ) -> tuple[float, float]:
    best = (0.5, -1.0)
    for thr in np.linspace(0.02, 0.98, 49):
        v = float(np.mean([M.f1_score(mp >= thr, m) for mp, m in zip(maps, masks, strict=True)
                           ])) if maps else 0.0
        if v > best[1]:
            best = (float(thr), v)
    return best


def _mean(values: list[float]) -> float | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 5) if v.size else None


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)

