"""Batched perceptual hashes in torch (CPU and GPU), for the attacks' inner loop.

Two forms of each hash:

* **exact** (:func:`fast_hash`): reproduces the reference libraries' bits. aHash, dHash and pHash
  follow imagehash step by step: Pillow's ``convert('L')`` in its integer arithmetic, Pillow's
  two-pass LANCZOS resize in its fixed-point arithmetic (horizontal pass first, each pass rounded
  to 8 bits), then the DCT (as a matrix) and the comparisons. PDQ follows the reference C++
  (float luma, two Jarosz box-filter passes per axis, decimation to 64x64, 16x16 DCT, median
  threshold) as linear maps in float64; the C++ accumulates in float32 with running sums, so a
  coefficient within rounding distance of the median can land on the other side (the agreement
  is measured and reported, never assumed).
* **surrogate** (:class:`HashSurrogate`): the same pipeline without rounding, differentiable; its
  output is each bit's pre-threshold value minus the threshold (positive means bit 1), for the
  white-box attacks' soft thresholds.

Images are float NCHW in [0, 1] (3 channels, or 1 for grey) and are rounded to the 8-bit grid
first, as the reference libraries see them. Bits are returned as bool tensors in the reference
libraries' order (imagehash: row-major; pdqhash: its reversed bit vector).

The fixed-point resize is computed in float64, where Pillow's integer arithmetic is exact.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

# Hashes with a torch implementation (exact and surrogate).
FAST_HASHES = ("average_hash", "dhash", "phash", "pdq")

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


# ---------------------------------------------------------------------------- Pillow LANCZOS

def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's LANCZOS resampling weights for one axis as an ``(out_size, in_size)`` matrix of
    the fixed-point integers Pillow uses (scaled by 2**22), following ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` in Pillow's Resample.c."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for v in w:
            ww += v
        for x in range(xmax):
            v = w[x] / ww if ww != 0.0 else w[x]
            scaled = v * (1 << _PRECISION_BITS)
            out[xx, xmin + x] = int(scaled - 0.5) if v < 0 else int(scaled + 0.5)
    return out


_WEIGHTS: dict[tuple[int, int, str], torch.Tensor] = {}


def _weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """Pillow's weights for one axis as float64 (in, out), already divided by 2**22."""
    key = (in_size, out_size, str(device))
    w = _WEIGHTS.get(key)
    if w is None:
        k = lanczos_weights(in_size, out_size).astype(np.float64) / (1 << _PRECISION_BITS)
        w = torch.from_numpy(np.ascontiguousarray(k.T)).to(device)
        _WEIGHTS[key] = w
    return w


def pillow_resize(gray: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's ``Image.resize((width, height), LANCZOS)`` of 8-bit grey images, exactly.

    ``gray``: (N, H, W) holding integers in [0, 255]. Returns float64 (N, height, width).
    Horizontal pass first, rounded to 8 bits, then the vertical pass, as Pillow does. In float64
    every product of an 8-bit value and a weight (a multiple of 2**-22 below 1) and every partial
    sum is exact, so ``floor(sum + 0.5)`` is Pillow's ``(sum + 2**21) >> 22`` whatever the
    summation order."""
    _, h, w = gray.shape
    out = gray.double()
    if width != w:
        out = torch.matmul(out, _weights(w, width, gray.device))
        out.add_(0.5).floor_().clamp_(0.0, 255.0)
    if height != h:
        out = torch.matmul(_weights(h, height, gray.device).T, out)
        out.add_(0.5).floor_().clamp_(0.0, 255.0)
    return out


# ---------------------------------------------------------------------------- luminance

def to_uint8_grid(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> float32 values in {0, ..., 255} (what an 8-bit file holds)."""
    return torch.round(x.float().clamp(0.0, 1.0) * 255.0)


_L_WEIGHTS = (19595.0, 38470.0, 7471.0)
_L_CACHE: dict[str, torch.Tensor] = {}


def pillow_gray(q: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')``: ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, exactly.

    ``q``: float32 (N, C, H, W) of 8-bit values. Computed as ``floor(0.5 + sum_c w_c q_c)`` with
    ``w_c = weight_c / 2**16``: every product and partial sum is a multiple of 2**-16 below 256,
    which float32 holds exactly, so the order of the sum does not matter. Grey inputs (C == 1)
    pass through."""
    n, c, h, w = q.shape
    if c == 1:
        return q[:, 0]
    key = str(q.device)
    wt = _L_CACHE.get(key)
    if wt is None:
        wt = (torch.tensor(_L_WEIGHTS, dtype=torch.float32) / 65536.0).view(1, 1, 3).to(q.device)
        _L_CACHE[key] = wt
    half = torch.full((1, 1, 1), 0.5, dtype=torch.float32, device=q.device)
    out = torch.baddbmm(half, wt.expand(n, 1, 3), q.float().reshape(n, 3, h * w))
    return out.floor_().view(n, h, w)


# ---------------------------------------------------------------------------- DCT matrices

@lru_cache(maxsize=16)
def _scipy_dct2_matrix(n: int, keep: int) -> np.ndarray:
    """Rows 0..keep-1 of scipy.fftpack's unnormalised DCT-II: 2 cos(pi k (2j+1) / 2n)."""
    k = np.arange(keep)[:, None]
    j = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2.0 * n))


@lru_cache(maxsize=4)
def _pdq_dct_matrix() -> np.ndarray:
    """PDQ's 16x64 DCT matrix (rows 1..16 of the orthonormal DCT-II)."""
    i = np.arange(1, 17)[:, None]
    j = np.arange(64)[None, :]
    return np.sqrt(2.0 / 64) * np.cos((np.pi / 2 / 64) * i * (2 * j + 1))


def _box_matrix(n: int, window: int) -> np.ndarray:
    """PDQ's 1-D box filter (``box1DFloat``) as a matrix: output i averages inputs
    [i - (window - half), i + half - 1] clipped to the vector, half = (window + 2) // 2."""
    half = (window + 2) // 2
    m = np.zeros((n, n))
    for i in range(n):
        lo, hi = max(0, i - (window - half)), min(n - 1, i + half - 1)
        m[i, lo:hi + 1] = 1.0 / (hi - lo + 1)
    return m


@lru_cache(maxsize=16)
def pdq_axis_matrix(n: int) -> np.ndarray:
    """(16, n): PDQ's two box passes, decimation to 64 and DCT along one axis."""
    d = _pdq_dct_matrix()
    if n == 64:
        return d
    window = (n + 2 * 64 - 1) // (2 * 64)
    box = _box_matrix(n, window)
    blur = box @ box
    rows = [int(((i + 0.5) * n) / 64) for i in range(64)]
    return d @ blur[rows]


# ---------------------------------------------------------------------------- exact hashes

def _median_even(v: torch.Tensor) -> torch.Tensor:
    """numpy.median over the last dimension (mean of the two middle values for even sizes)."""
    s, _ = torch.sort(v, dim=-1)
    n = v.shape[-1]
    if n % 2:
        return s[..., n // 2]
    return (s[..., n // 2 - 1] + s[..., n // 2]) / 2


_PDQ_LUMA = (0.299, 0.587, 0.114)


def _pdq_coefficients_rgb(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PDQ's 16x16 DCT coefficients of 8-bit images (N, C, H, W), luma folded into the first
    matrix product (the pipeline after the luma is linear)."""
    n, ch, h, w = q.shape
    c = torch.as_tensor(pdq_axis_matrix(w), dtype=dtype, device=q.device)
    r = torch.as_tensor(pdq_axis_matrix(h), dtype=dtype, device=q.device)
    t = q.to(dtype) @ c.T                                        # (N, C, H, 16)
    if ch == 3:
        wts = torch.tensor(_PDQ_LUMA, dtype=dtype, device=q.device)
        t = torch.einsum("nchk,c->nhk", t, wts)
    else:
        t = t[:, 0]
    return (r @ t).reshape(n, 256)


def _pdq_coefficients(luma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n, h, w = luma.shape
    r = torch.as_tensor(pdq_axis_matrix(h), dtype=dtype, device=luma.device)
    c = torch.as_tensor(pdq_axis_matrix(w), dtype=dtype, device=luma.device)
    return (r @ luma.to(dtype) @ c.T).reshape(n, 256)


def _levels(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float()
    return to_uint8_grid(x)


def _fast_chunk(name: str, q: torch.Tensor, hash_size: int) -> torch.Tensor:
    """Bits of 8-bit images given as float32 levels in {0, ..., 255}."""
    n = q.shape[0]
    if name == "pdq":
        coef = _pdq_coefficients_rgb(q, torch.float64)
        med = torch.kthvalue(coef, 128, dim=1, keepdim=True).values
        return (coef > med).flip(1)
    gray = pillow_gray(q)
    if name == "average_hash":
        p = pillow_resize(gray, hash_size, hash_size).reshape(n, -1)
        return p > p.mean(dim=1, keepdim=True)
    if name == "dhash":
        p = pillow_resize(gray, hash_size + 1, hash_size)
        return (p[:, :, 1:] > p[:, :, :-1]).reshape(n, -1)
    if name == "phash":
        size = hash_size * 4
        p = pillow_resize(gray, size, size)
        c = torch.as_tensor(_scipy_dct2_matrix(size, hash_size), device=q.device)
        low = (c @ p @ c.T).reshape(n, -1)
        return low > _median_even(low).unsqueeze(1)
    raise ValueError(f"no torch implementation of {name!r} (available: {', '.join(FAST_HASHES)})")


# Images per chunk are chosen so a chunk's float32 copy stays near this size: small temporaries
# stay in the allocator's cache instead of being mapped and zero-filled on every operation.
_CHUNK_BYTES = 2 << 20


def _check(name: str, x: torch.Tensor) -> None:
    if name not in FAST_HASHES:
        raise ValueError(f"no torch implementation of {name!r} "
                         f"(available: {', '.join(FAST_HASHES)})")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")


def fast_hash(name: str, x: torch.Tensor, hash_size: int = 8,
              chunk: int | None = None) -> torch.Tensor:
    """Exact bits of hash ``name`` for images ``x`` (N, C, H, W): float in [0, 1] (rounded to
    the 8-bit grid) or uint8. Returns bool (N, bits) in the reference libraries' bit order.

    ``hash_size`` applies to the imagehash hashes (PDQ is always 256 bits)."""
    _check(name, x)
    step = chunk or max(1, _CHUNK_BYTES // (4 * x[0].numel()))
    with torch.no_grad():
        parts = [_fast_chunk(name, _levels(x[i:i + step]), hash_size)
                 for i in range(0, x.shape[0], step)]
    if not parts:
        return torch.zeros((0, hash_bits(name, hash_size)), dtype=torch.bool, device=x.device)
    return torch.cat(parts)


def fast_hash_levels(name: str, q: torch.Tensor, hash_size: int = 8) -> torch.Tensor:
    """:func:`fast_hash` for images already given as float32 levels in {0, ..., 255} (no
    rounding pass; the caller guarantees whole levels)."""
    _check(name, q)
    with torch.no_grad():
        return _fast_chunk(name, q.float(), hash_size)


def hash_bits(name: str, hash_size: int = 8) -> int:
    """Bits of a fast-path hash."""
    _check(name, torch.zeros(1, 1, 1, 1))
    return 256 if name == "pdq" else hash_size * hash_size


# ---------------------------------------------------------------------------- surrogates

class HashSurrogate(nn.Module):
    """Differentiable stand-in for a hash: the exact pipeline without rounding.

    ``forward(x)`` returns, per bit, the pre-threshold value minus the threshold divided by a
    per-image scale (the median absolute value of those differences, detached), so the sign is
    the bit and the magnitude is comparable across images. Bits are in the reference order.
    """

    def __init__(self, name: str, hash_size: int = 8):
        super().__init__()
        if name not in FAST_HASHES:
            raise ValueError(f"no surrogate for {name!r} (available: {', '.join(FAST_HASHES)})")
        self.name = name
        self.hash_size = hash_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.clamp(0.0, 1.0) * 255.0
        n = x.shape[0]
        if self.name == "pdq":
            if v.shape[1] == 1:
                luma = v[:, 0]
            else:
                luma = v[:, 0] * 0.299 + v[:, 1] * 0.587 + v[:, 2] * 0.114
            coef = _pdq_coefficients(luma, torch.float32)
            med = torch.kthvalue(coef, 128, dim=1, keepdim=True).values
            out = (coef - med).flip(1)
        else:
            if v.shape[1] == 1:
                gray = v[:, 0]
            else:
                w = torch.tensor(_L_WEIGHTS, device=x.device, dtype=v.dtype) / 65536.0
                gray = torch.einsum("nchw,c->nhw", v, w)
            hs = self.hash_size
            if self.name == "average_hash":
                p = _soft_resize(gray, hs, hs).reshape(n, -1)
                out = p - p.mean(dim=1, keepdim=True)
            elif self.name == "dhash":
                p = _soft_resize(gray, hs + 1, hs)
                out = (p[:, :, 1:] - p[:, :, :-1]).reshape(n, -1)
            else:
                size = hs * 4
                p = _soft_resize(gray, size, size)
                c = torch.as_tensor(_scipy_dct2_matrix(size, hs), dtype=p.dtype,
                                    device=x.device)
                low = (c @ p @ c.T).reshape(n, -1)
                out = low - _median_even(low).unsqueeze(1)
        scale = out.detach().abs().median(dim=1, keepdim=True).values.clamp_min(1e-6)
        return out / scale


def _soft_resize(gray: torch.Tensor, width: int, height: int) -> torch.Tensor:
    _, h, w = gray.shape
    out = gray
    if width != w:
        out = out @ _weights(w, width, gray.device).to(gray.dtype)
    if height != h:
        out = _weights(h, height, gray.device).to(gray.dtype).T @ out
    return out
