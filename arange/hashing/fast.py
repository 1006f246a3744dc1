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

On a CPU with AVX-512 VNNI the imagehash hashes' grey conversion and resize run in a compiled
kernel (``_pillow.c``, built at install when a C compiler is present) that does Pillow's integer
arithmetic fused per image; elsewhere (GPU, other CPUs, no compiler) the torch code below does
the same arithmetic with matrix products. Both give Pillow's bytes exactly; ``ARANGE_FAST_HASH``
(``torch`` or ``native``) forces one.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
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


def _bicubic(x: float) -> float:
    a = -0.5  # Pillow's bicubic
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


# Pillow's resampling filters: name -> (filter, support)
FILTERS = {"lanczos": (_lanczos, 3.0), "bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's LANCZOS weights for one axis (:func:`resample_weights`)."""
    return resample_weights(in_size, out_size, "lanczos")


@lru_cache(maxsize=64)
def resample_weights(in_size: int, out_size: int, name: str) -> np.ndarray:
    """Pillow's resampling weights (``name`` in :data:`FILTERS`) for one axis as an
    ``(out_size, in_size)`` matrix of the fixed-point integers Pillow uses (scaled by 2**22),
    following ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in Pillow's Resample.c."""
    fn, base_support = FILTERS[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [fn((x + xmin - center + 0.5) * ss) for x in range(xmax)]
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


_F32_EXACT = 1 << 24  # float32 holds every integer of magnitude below 2**24 exactly


@lru_cache(maxsize=64)
def split_weights(in_size: int, out_size: int) -> np.ndarray | None:
    """Pillow's fixed-point weights split as ``k = hi + lo`` so that both halves of the resize
    sum are exact in float32, as a ``(2 * out_size, in_size)`` float32 matrix (``hi`` rows,
    then ``lo`` rows) in units of 2**-22; ``None`` when no split is exact (float64 is used).

    ``hi`` keeps the top bits (a multiple of 2**s) and ``lo`` the rest (below 2**(s-1) in
    magnitude). Any partial sum of ``v * hi`` or ``v * lo`` over 8-bit values ``v`` is bounded
    by ``255 * sum |hi|`` (resp. ``|lo|``); when both bounds, in units of their last bit, are
    below 2**24, every product and partial sum of a float32 matrix product is exact whatever
    the summation order, so ``hi_sum + lo_sum`` (added in float64) is Pillow's integer sum."""
    k = lanczos_weights(in_size, out_size)  # (out, in) int64
    for s in range(1, _PRECISION_BITS):
        hi = np.round(k / (1 << s)).astype(np.int64)       # in units of 2**s
        lo = k - hi * (1 << s)                              # in units of 1
        if (255 * np.abs(hi).sum(axis=1).max() < _F32_EXACT
                and 255 * np.abs(lo).sum(axis=1).max() < _F32_EXACT):
            scale = float(1 << _PRECISION_BITS)
            both = np.concatenate([hi * float(1 << s) / scale, lo / scale], axis=0)
            return np.ascontiguousarray(both.astype(np.float32))
    return None


def _identity_split(size: int) -> np.ndarray:
    """Split weights of a pass that keeps the size (Pillow skips it; the identity is exact)."""
    return np.concatenate([np.eye(size), np.zeros((size, size))], axis=0).astype(np.float32)


_AXIS: dict[tuple[int, tuple[int, ...], str], tuple[torch.Tensor, bool]] = {}


def _axis_weights(in_size: int, outs: tuple[int, ...],
                  device: torch.device) -> tuple[torch.Tensor, bool]:
    """Weights of one resize pass to each size in ``outs``, stacked so one matrix product
    serves them all: ``(float32 [hi_1; hi_2; ...; lo_1; lo_2; ...], True)`` (rows) when every
    split of :func:`split_weights` is exact, else ``(float64 [w_1; w_2; ...], False)``."""
    key = (in_size, outs, str(device))
    hit = _AXIS.get(key)
    if hit is None:
        splits = [split_weights(in_size, o) if o != in_size else _identity_split(in_size)
                  for o in outs]
        if all(s is not None for s in splits):
            m = torch.from_numpy(np.concatenate([s[:o] for s, o in zip(splits, outs)]
                                                + [s[o:] for s, o in zip(splits, outs)]))
        else:
            m = torch.cat([_weights(in_size, o, torch.device("cpu")).T if o != in_size
                           else torch.eye(in_size, dtype=torch.float64) for o in outs])
        hit = _AXIS[key] = (m.contiguous().to(device), m.dtype == torch.float32)
    return hit


def _round_sums(s: torch.Tensor, outs: tuple[int, ...], split: bool) -> list[torch.Tensor]:
    """A pass's sums, one row per output line (rows as stacked by :func:`_axis_weights`) ->
    Pillow's ``clip8((sum + 2**21) >> 22)``, float64, one block of rows per output size. A
    split sum is added in float64, where both halves and the total are exact."""
    s = s.double()
    rows = sum(outs)
    v = s[:rows] + s[rows:] if split else s
    return list(torch.split(v.add_(0.5).floor_().clamp_(0.0, 255.0), list(outs)))


def _resize_t(pt: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's LANCZOS resize from horizontally resized levels laid out (width, N, H) (or the
    unresized grey, then width == W): vertical pass, -> float64 (N, height, width)."""
    _, n, h = pt.shape
    if height == h:
        return pt.permute(1, 2, 0)
    wts, split = _axis_weights(h, (height,), pt.device)
    s = torch.mm(wts, pt.reshape(width * n, h).to(wts.dtype).T)    # (rows, width * N)
    r = _round_sums(s, (height,), split)[0].view(height, width, n)  # [y, x, n]
    return r.permute(2, 0, 1)


def _pass(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """One Pillow resize pass along the last axis in integers: ``clip8((a @ k.T + 2**21) >> 22)``."""
    s = a.astype(np.int64) @ k.T.astype(np.int64) + (1 << (_PRECISION_BITS - 1))
    return np.clip(s >> _PRECISION_BITS, 0, 255)


@lru_cache(maxsize=1)
def _pillow_has_vertical_first_rule() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks by more
    than twice as many pixels as the width (recent Pillow does, older Pillow never): probed once
    on a small image where the two orders give different bytes."""
    from PIL import Image

    g = np.random.default_rng(0).integers(0, 256, size=(33, 17), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(g, "L").resize((8, 8), Image.Resampling.LANCZOS))
    horizontal_first = _pass(_pass(g, lanczos_weights(17, 8)).T, lanczos_weights(33, 8)).T
    return not np.array_equal(ref, horizontal_first)


def vertical_first(h: int, w: int, height: int, width: int) -> bool:
    """Whether Pillow resizes (h, w) to (height, width) with the vertical pass first (only
    matters when both passes run)."""
    if width == w or height == h:
        return False
    shrink_h = h - height
    return shrink_h > 0 and shrink_h > (w - width) * 2 and _pillow_has_vertical_first_rule()


def pillow_resize(gray: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's ``Image.resize((width, height), LANCZOS)`` of 8-bit grey images, exactly.

    ``gray``: (N, H, W) holding integers in [0, 255]. Returns float64 (N, height, width).
    Horizontal pass first, rounded to 8 bits, then the vertical pass, as Pillow does (or the
    other way round where :func:`vertical_first` says Pillow does). Each pass is a float32
    matrix product against the split weights of :func:`split_weights` (exact), or a float64 one
    where no split is exact; ``floor(sum + 0.5)`` is then Pillow's ``(sum + 2**21) >> 22``."""
    n, h, w = gray.shape
    if vertical_first(h, w, height, width):
        return pillow_resize(gray.transpose(1, 2), height, width).transpose(1, 2)
    if width == w:
        return _resize_t(gray.double().permute(2, 0, 1), width, height)
    wts, split = _axis_weights(w, (width,), gray.device)
    s = torch.mm(wts, gray.reshape(n * h, w).to(wts.dtype).T)      # (rows, N * H)
    return _resize_t(_round_sums(s, (width,), split)[0].view(width, n, h), width, height)


# ---------------------------------------------------------------------------- luminance

def to_uint8_grid(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> float32 values in {0, ..., 255} (what an 8-bit file holds)."""
    return torch.round(x.float().clamp(0.0, 1.0) * 255.0)


_L_WEIGHTS = (19595.0, 38470.0, 7471.0)
_L_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _gray_consts(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights / 2**16 as (1, 1, 3), 0.5 as (1, 1, 1)), float32, cached per device."""
    key = str(device)
    cached = _L_CACHE.get(key)
    if cached is None:
        cached = _L_CACHE[key] = (
            (torch.tensor(_L_WEIGHTS, dtype=torch.float32) / 65536.0).view(1, 1, 3).to(device),
            torch.full((1, 1, 1), 0.5, dtype=torch.float32, device=device))
    return cached


def pillow_gray(q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pillow's ``convert('L')``: ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, exactly.

    ``q``: float32 (N, C, H, W) of 8-bit values; ``out``: optional float32 (N, H, W) to write
    into. Computed as ``floor(0.5 + sum_c w_c q_c)`` with ``w_c = weight_c / 2**16``: every
    product and partial sum is a multiple of 2**-16 below 256, which float32 holds exactly, so
    the order of the sum does not matter. Grey inputs (C == 1) pass through."""
    n, c, h, w = q.shape
    if c == 1:
        return q[:, 0] if out is None else out.copy_(q[:, 0])
    wt, half = _gray_consts(q.device)
    if out is None:
        out = torch.empty((n, h, w), dtype=torch.float32, device=q.device)
    torch.baddbmm(half, wt.expand(n, 1, 3), q.float().reshape(n, 3, h * w),
                  out=out.view(n, 1, h * w))
    return out.floor_()


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


def _pdq_coefficients(luma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n, h, w = luma.shape
    r = torch.as_tensor(pdq_axis_matrix(h), dtype=dtype, device=luma.device)
    c = torch.as_tensor(pdq_axis_matrix(w), dtype=dtype, device=luma.device)
    return (r @ luma.to(dtype) @ c.T).reshape(n, 256)


def _resize_size(name: str, hash_size: int) -> tuple[int, int]:
    """(width, height) imagehash resizes to for ``name``."""
    if name == "dhash":
        return hash_size + 1, hash_size
    if name == "phash":
        return hash_size * 4, hash_size * 4
    return hash_size, hash_size


# Ties: a coefficient this close to the median (relative to the image's largest coefficient)
# may land on either side in the reference's own floating point (scipy's FFT for pHash, float32
# running sums for PDQ), so such images are hashed by the reference library instead. Natural
# images almost never come this close; flat images, gradients, checkerboards, upscaled tiny
# crops and other symmetric images do, where coefficients are equal in exact arithmetic.
TIE_TOLERANCE = {"phash": 1e-9, "pdq": 1e-5}


def _ambiguous(values: torch.Tensor, med: torch.Tensor, rel: float, member: bool
               ) -> torch.Tensor:
    """Rows with a value within ``rel`` x the row's largest magnitude of the median ``med``
    (N, 1); ``member``: the median is one of the values (which is then not counted)."""
    scale = values.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    near = ((values - med).abs() <= rel * scale).sum(dim=1)
    return near > (1 if member else 0)  # type: ignore[no-any-return]


def _imagehash_bits(name: str, p: torch.Tensor, hash_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bits of an imagehash hash from its resized grey levels (N, height, width), and for pHash
    the rows whose DCT ties with the median (see :data:`TIE_TOLERANCE`)."""
    n = p.shape[0]
    if name == "average_hash":
        p = p.reshape(n, -1)
        return p > p.mean(dim=1, keepdim=True), None
    if name == "dhash":
        return (p[:, :, 1:] > p[:, :, :-1]).reshape(n, -1), None
    size = hash_size * 4
    c = torch.as_tensor(_scipy_dct2_matrix(size, hash_size), device=p.device)
    r = p.permute(1, 2, 0).to(c.dtype)  # [y, x, n]: the torch resize's own layout, no copy
    t = (c @ r.reshape(size, size * n)).view(hash_size, size, n)  # DCT over y: [k, x, n]
    low = torch.matmul(c, t).permute(2, 0, 1).reshape(n, -1)      # over x: [n, k, l]
    med = _median_even(low).unsqueeze(1)
    return low > med, _ambiguous(low, med, TIE_TOLERANCE["phash"], member=False)


# Images per chunk are chosen so a chunk's float32 levels stay near this size: the full-size
# stages (levels, grey, first resize pass) of a chunk run in the CPU's cache; everything after
# the first resize pass is small and runs once on the whole batch.
_CHUNK_BYTES = 1 << 19


def _check(name: str, x: torch.Tensor) -> None:
    if name not in FAST_HASHES:
        raise ValueError(f"no torch implementation of {name!r} "
                         f"(available: {', '.join(FAST_HASHES)})")
    shape = x.shape
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(shape)}")


def _hashes(names: tuple[str, ...], x: torch.Tensor, hash_size: int, step: int,
            levels: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The exact pipeline. Per chunk of ``step`` images: 8-bit levels (float32), then for the
    imagehash hashes Pillow's grey and one matrix product for the horizontal passes of every
    size asked for, and for PDQ its first (column) matrix product; the rest on the batch."""
    n, ch, h, w = x.shape
    dev = x.device
    sizes = {name: _resize_size(name, hash_size) for name in names if name != "pdq"}
    # sizes Pillow resizes vertical pass first: from the whole batch's grey, after the loop
    vsizes = {name: s for name, s in sizes.items() if vertical_first(h, w, s[1], s[0])}
    sizes = {name: s for name, s in sizes.items() if name not in vsizes}
    widths = tuple(dict.fromkeys(wd for wd, _ in sizes.values()))
    hsum = pdq = None
    gfull = torch.empty((n, h, w), dtype=torch.float32, device=dev) if vsizes else None
    wts, split = torch.empty(0), True
    if widths:
        wts, split = _axis_weights(w, widths, dev)
        hsum = torch.empty((wts.shape[0], n * h), dtype=wts.dtype, device=dev)
    if "pdq" in names:
        pcols = torch.as_tensor(pdq_axis_matrix(w).T, dtype=torch.float32, device=dev)
        pdq = torch.empty((n * ch * h, 16), dtype=torch.float32, device=dev)
    step = min(step, n)
    q = torch.empty((step, ch, h, w), dtype=torch.float32, device=dev)
    g = torch.empty((step, h, w), dtype=torch.float32, device=dev)
    gray_w, half = _gray_consts(dev)

    def views(m: int) -> tuple[torch.Tensor, ...]:
        # views of the chunk buffers made once per chunk size (most chunks share one size)
        qm, gm = q[:m], g[:m]
        gt = gm.view(m * h, w).T if hsum is None or wts.dtype == torch.float32 else None
        return (qm, qm.view(m, ch, h * w), qm.view(m * ch * h, w), gm, gm.view(m, 1, h * w),
                gt, gray_w.expand(m, 1, 3))

    full = views(step)
    for i in range(0, n, step):
        m = min(step, n - i)
        qm, q3, q2, gm, g1, gt, wm = full if m == step else views(m)
        if levels or x.dtype == torch.uint8:
            qm.copy_(x[i:i + m])
        else:
            torch.clamp(x[i:i + m], 0.0, 1.0, out=qm).mul_(255.0).round_()
        if pdq is not None:
            torch.mm(q2, pcols, out=pdq[i * ch * h:(i + m) * ch * h])
        if hsum is not None or gfull is not None:
            if ch == 3:  # Pillow's convert('L'), see pillow_gray
                torch.baddbmm(half, wm, q3, out=g1).floor_()
            else:
                gm.copy_(qm[:, 0])
            if gfull is not None:
                gfull[i:i + m].copy_(gm)
        if hsum is not None:
            if gt is None:  # no exact float32 split: float64
                gt = gm.reshape(m * h, w).double().T
            torch.mm(wts, gt, out=hsum[:, i * h:(i + m) * h])
    out: dict[str, torch.Tensor] = {}
    ties: dict[str, torch.Tensor] = {}

    def keep(name: str, found: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        out[name] = found[0]
        if found[1] is not None:
            ties[name] = found[1]

    if hsum is not None:
        passes = dict(zip(widths, _round_sums(hsum, widths, split)))
        for name, (wd, ht) in sizes.items():
            p = _resize_t(passes[wd].view(wd, n, h), wd, ht)
            keep(name, _imagehash_bits(name, p, hash_size))
    for name, (wd, ht) in vsizes.items():
        keep(name, _imagehash_bits(name, pillow_resize(gfull, wd, ht), hash_size))
    if pdq is not None:
        t = pdq.view(n, ch, h, 16).double()
        if ch == 3:
            t = torch.einsum("nchk,c->nhk", t, torch.tensor(_PDQ_LUMA, dtype=t.dtype,
                                                             device=dev))
        else:
            t = t[:, 0]
        rows = torch.as_tensor(pdq_axis_matrix(h), dtype=t.dtype, device=dev)
        coef = (rows @ t).reshape(n, 256)
        med = torch.kthvalue(coef, 128, dim=1, keepdim=True).values
        out["pdq"] = (coef > med).flip(1)
        ties["pdq"] = _ambiguous(coef, med, TIE_TOLERANCE["pdq"], member=True) | \
            _pdq_too_small(h, w, n, dev)
    return out, ties


# PDQ's reference treats images smaller than this (in either dimension) its own way
# (no box filtering, rows repeated by the decimation); they go to the reference.
_PDQ_MIN_SIDE = 16


def _pdq_too_small(h: int, w: int, n: int, dev: torch.device) -> torch.Tensor:
    return torch.full((n,), min(h, w) < _PDQ_MIN_SIDE, dtype=torch.bool, device=dev)


# ---------------------------------------------------------------------------- native kernel

try:
    from . import _pillow as _native
except ImportError:  # built at install only where a C compiler was found
    _native = None

_BACKEND_ENV = "ARANGE_FAST_HASH"


def fast_hash_backend(device: torch.device | str = "cpu") -> str:
    """What computes the imagehash hashes' grey conversion and resize for images on ``device``:
    ``"native"`` (the compiled kernel, on a CPU with AVX-512 VNNI) or ``"torch"``.
    ``ARANGE_FAST_HASH=torch`` or ``=native`` overrides the choice on a CPU (``native`` then runs
    the kernel's portable C where the CPU lacks VNNI, which is slower than torch)."""
    return _backend(torch.device(device).type == "cpu")


_HAS_VNNI = _native is not None and _native.has_vnni()


def _backend(cpu: bool) -> str:
    if not cpu or _native is None:
        return "torch"
    forced = os.environ.get(_BACKEND_ENV, "").strip().lower()
    if forced in ("torch", "native"):
        return forced
    return "native" if _HAS_VNNI else "torch"


@lru_cache(maxsize=8)
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool kept for the process, so the attacks' many small calls do not start
    threads each time."""
    return ThreadPoolExecutor(workers, thread_name_prefix="arange-hash")


@lru_cache(maxsize=64)
def _int_weights(in_size: int, out_size: int) -> np.ndarray:
    return np.ascontiguousarray(lanczos_weights(in_size, out_size).astype(np.int32))


def native_resize(x: torch.Tensor, sizes: list[tuple[int, int]], levels: bool = False,
                  impl: int = 0) -> list[torch.Tensor]:
    """Pillow's ``convert('L').resize((width, height), LANCZOS)`` of CPU images ``x`` (N, C, H,
    W) for each ``(width, height)`` in ``sizes``, by the compiled kernel: uint8 tensors (N,
    height, width). ``x``: uint8, or float in [0, 1] (rounded to the 8-bit grid as
    :func:`to_uint8_grid`), or float levels in [0, 255] with ``levels``. The batch is split
    over ``torch.get_num_threads()`` threads (the kernel releases the GIL). ``impl``: 0 best
    available, 1 portable C, 2 AVX-512 VNNI."""
    outs, _ = _native_resize(x, sizes, levels, impl)
    return [torch.from_numpy(o) for o in outs]


# The kernel's own bits (BITS_MEAN, BITS_DIFF in _pillow.c's image_bits), by hash.
_BITS_MEAN, _BITS_DIFF = 1, 2
_KERNEL_BITS = {"average_hash": _BITS_MEAN, "dhash": _BITS_DIFF}


@lru_cache(maxsize=64)
def _plan_spec(h: int, w: int, sizes: tuple[tuple[int, int], ...], kinds: tuple[int, ...]
               ) -> tuple[tuple, ...]:
    """Per output size: (width, height, horizontal and vertical weights or None, vertical pass
    first, kernel bits kind, bits per image)."""
    return tuple((wd, ht, None if wd == w else _int_weights(w, wd),
                  None if ht == h else _int_weights(h, ht), vertical_first(h, w, ht, wd), kind,
                  ht * (wd - 1 if kind == _BITS_DIFF else wd) if kind else 0)
                 for (wd, ht), kind in zip(sizes, kinds))


def _native_resize(x: torch.Tensor, sizes: list[tuple[int, int]], levels: bool = False,
                   impl: int = 0, bits: list[str | None] | None = None
                   ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """:func:`native_resize` as numpy arrays, and for each size whose entry of ``bits`` names
    average_hash or dhash, that hash's bits (bool (N, bits)) computed by the kernel."""
    if _native is None:
        raise RuntimeError("the native hash kernel is not built (no C compiler at install?)")
    n, c, h, w = x.shape
    if x.dtype == torch.uint8:
        mode, arr = 0, np.ascontiguousarray(x.numpy())
    else:
        mode, arr = (2 if levels else 1), x.detach().to(torch.float32).contiguous().numpy()
    spec = _plan_spec(h, w, tuple(sizes), tuple(_KERNEL_BITS.get(b or "", 0)
                                                for b in (bits or [None] * len(sizes))))
    outs = [np.empty((n, ht, wd), dtype=np.uint8) for wd, ht, *_ in spec]
    hashes = [np.empty((n, nbits), dtype=bool) if nbits else None for *_, nbits in spec]

    def plans(lo: int, hi: int) -> list[tuple]:
        return [(wd, ht, kh, kv, out[lo:hi], vf) + ((hb[lo:hi], kind) if kind else ())
                for (wd, ht, kh, kv, vf, kind, _), out, hb in zip(spec, outs, hashes)]

    workers = max(1, min(torch.get_num_threads(), n // 16))
    if workers == 1:
        _native.resize(arr, mode, n, c, h, w, plans(0, n), impl)
    else:
        def run(lo: int, hi: int) -> None:
            _native.resize(arr[lo:hi], mode, hi - lo, c, h, w, plans(lo, hi), impl)

        bounds = np.linspace(0, n, workers + 1).astype(int)
        list(_pool(workers).map(run, bounds[:-1], bounds[1:]))
    return outs, hashes


def _phash_bits_np(p: np.ndarray, hash_size: int) -> tuple[np.ndarray, np.ndarray]:
    """pHash bits of the native kernel's uint8 levels (N, 4 hash_size, 4 hash_size), in numpy
    (a fraction of torch's per-call cost at these sizes), and the rows that tie."""
    n = p.shape[0]
    cn = _scipy_dct2_matrix(hash_size * 4, hash_size)
    low = (cn @ p.astype(np.float64) @ cn.T).reshape(n, -1)
    srt = np.sort(low, axis=1)
    half = low.shape[1] // 2
    med = srt[:, half] if low.shape[1] % 2 else (srt[:, half - 1] + srt[:, half]) / 2
    ties = _ambiguous(torch.from_numpy(low), torch.from_numpy(med[:, None]),
                      TIE_TOLERANCE["phash"], member=False).numpy()
    return low > med[:, None], ties


def _native_hashes(names: tuple[str, ...], x: torch.Tensor, hash_size: int,
                   chunk: int | None, levels: bool
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`_hashes` with the imagehash hashes' grey and resize done by the native kernel
    (and aHash's and dHash's bits too)."""
    imagehash_names = [name for name in names if name != "pdq"]
    sizes = [_resize_size(name, hash_size) for name in imagehash_names]  # distinct per name
    outs, hashes = _native_resize(x, sizes, levels=levels, bits=imagehash_names)
    out: dict[str, torch.Tensor] = {}
    ties: dict[str, torch.Tensor] = {}
    for name, o, b in zip(imagehash_names, outs, hashes):
        if b is None:
            bits, tie = _phash_bits_np(o, hash_size)
            out[name], ties[name] = torch.from_numpy(bits), torch.from_numpy(tie)
        else:
            out[name] = torch.from_numpy(b)
    if "pdq" in names:
        with torch.no_grad():
            more, more_ties = _hashes(("pdq",), x, hash_size, _step(x, chunk), levels)
        out.update(more)
        ties.update(more_ties)
    return out, ties


def _exact(names: tuple[str, ...], x: torch.Tensor, hash_size: int, chunk: int | None,
           levels: bool, deferred: dict[str, torch.Tensor] | None = None
           ) -> dict[str, torch.Tensor]:
    """Exact bits of ``names`` for a non-empty batch. The native path runs outside autograd
    bookkeeping and with few library calls: on a batch whose caches were just evicted, each
    torch call costs tens of microseconds. Images whose coefficients tie with the median are
    hashed by the reference library (their rows go into ``deferred`` when given)."""
    if _backend(x.is_cpu) == "native" and any(name != "pdq" for name in names):
        out, ties = _native_hashes(names, x, hash_size, chunk, levels)
    else:
        with torch.no_grad():
            out, ties = _hashes(names, x, hash_size, _step(x, chunk), levels)
    for name, tie in ties.items():
        rows = tie.nonzero().flatten().tolist()
        if deferred is not None:
            deferred[name] = tie.cpu()
        if rows:
            out[name] = _from_reference(name, x, rows, out[name], hash_size, levels)
    return out


def _from_reference(name: str, x: torch.Tensor, rows: list[int], bits: torch.Tensor,
                    hash_size: int, levels: bool) -> torch.Tensor:
    """``bits`` with ``rows`` recomputed by the reference library on the 8-bit images."""
    from .reference import reference_bits

    sel = x[rows]
    q = sel.float() if levels or x.dtype == torch.uint8 else to_uint8_grid(sel)
    imgs = q.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if imgs.shape[3] == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    params = {} if name == "pdq" else {"hash_size": hash_size}
    ref = torch.from_numpy(np.stack([reference_bits(name, im, params) for im in imgs]))
    bits = bits.clone()
    bits[rows] = ref.to(bits.device)
    return bits


def _step(x: torch.Tensor, chunk: int | None) -> int:
    """Images per chunk of the torch pipeline (see _CHUNK_BYTES)."""
    return chunk or max(1, _CHUNK_BYTES // (4 * math.prod(x.shape[1:])))


def fast_hashes(names: tuple[str, ...] | list[str], x: torch.Tensor, hash_size: int = 8,
                chunk: int | None = None, deferred: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """:func:`fast_hash` of several hashes of the same images at once: each chunk is read and
    converted once, Pillow's grey is shared by the imagehash hashes, and their horizontal
    resize passes are one matrix product. ``deferred``, when given, receives per hash the rows
    that tied and were hashed by the reference library instead."""
    names = tuple(dict.fromkeys(names))
    for name in names:
        _check(name, x)
    if x.shape[0] == 0:
        return {name: torch.zeros((0, hash_bits(name, hash_size)), dtype=torch.bool,
                                  device=x.device) for name in names}
    bits = _exact(names, x, hash_size, chunk, levels=False, deferred=deferred)
    return {name: bits[name] for name in names}


def fast_hash(name: str, x: torch.Tensor, hash_size: int = 8,
              chunk: int | None = None) -> torch.Tensor:
    """Exact bits of hash ``name`` for images ``x`` (N, C, H, W): float in [0, 1] (rounded to
    the 8-bit grid) or uint8. Returns bool (N, bits) in the reference libraries' bit order.

    ``hash_size`` applies to the imagehash hashes (PDQ is always 256 bits)."""
    return fast_hashes((name,), x, hash_size, chunk)[name]


def fast_hash_levels(name: str, q: torch.Tensor, hash_size: int = 8) -> torch.Tensor:
    """:func:`fast_hash` for images already given as float levels in {0, ..., 255} (no
    rounding pass; the caller guarantees whole levels)."""
    _check(name, q)
    if q.shape[0] == 0:
        return fast_hash(name, q, hash_size)
    return _exact((name,), q, hash_size, None, levels=True)[name]


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
