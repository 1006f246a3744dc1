"""False-positive rates at corpus scale: every pair of a benign image folder, in bounded memory.

A matcher's threshold is only as good as the false matches it causes among the images it
scans. ``evaluation.corpus`` points the hash range at a folder of benign images:

* **Hashing** runs as ordinary jobs, one per shard of ``shard_size`` files in sorted order, so it
  resumes shard by shard and spreads over Ray workers like every other job. Each file is hashed
  as it is on disk (no resize) by the reference library; the bits are stored packed
  (``corpus/<hash>/<shard>.npy``, 8 bytes per 64 bits).
* **Counting** takes every pair i < j, XORs the packed words and counts the bits (numpy's
  ``bitwise_count``), block by block in a few threads, into one histogram of Hamming distances:
  the false-positive rate at threshold t is the share of pairs at distance <= t. Memory is the
  packed bits plus one block. ``pairs: N`` draws N pairs uniformly at random instead and
  reports Wilson intervals.

Unreadable files are left out and listed (the count of pairs says what was measured).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from arange.errors import DataError

from .data import IMAGE_SUFFIXES, image_files


def corpus_files(root: str | Path) -> list[Path]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"evaluation.corpus: {root} is not a folder")
    files = image_files(root)
    if len(files) < 2:
        raise DataError(f"evaluation.corpus: {root} holds {len(files)} image file(s) "
                        f"({', '.join(IMAGE_SUFFIXES)}); counting pairs needs at least 2")
    return files


def corpus_fingerprint(root: str | Path, files: list[Path]) -> str:
    """A key of the folder's content listing: relative paths, sizes and modification times."""
    root = Path(root).expanduser()
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def pack(bits: np.ndarray) -> np.ndarray:
    """bool (N, B) -> uint64 (N, ceil(B / 64)), zero-padded: popcount of XOR is the Hamming
    distance."""
    n, b = bits.shape
    words = max(1, math.ceil(b / 64))
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :b] = bits
    return np.packbits(padded, axis=1).view(">u8").astype(np.uint64)


def hash_files(name: str, params: dict[str, Any], files: list[Path]
               ) -> tuple[np.ndarray, list[int]]:
    """Packed reference bits of the readable files, and the indices (into ``files``) of those
    that could not be read."""
    from PIL import Image, UnidentifiedImageError

    from .reference import HASHES, reference_bits

    nbits = HASHES.get(name).bits(params)
    rows, bad = [], []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
            bad.append(i)
            continue
        rows.append(reference_bits(name, a, params))
    bits = np.stack(rows) if rows else np.zeros((0, nbits), dtype=bool)
    return pack(bits), bad


def _block_histogram(words: np.ndarray, i0: int, i1: int, nbits: int, chunk: int
                     ) -> np.ndarray:
    """Distances of the pairs (i, j) with i0 <= i < i1 and i < j; ``words`` is the packed bits
    transposed, (W, N), so each XOR runs over contiguous rows."""
    n = words.shape[1]
    out = np.zeros(nbits + 1, dtype=np.int64)
    xor = np.empty((i1 - i0, chunk), dtype=np.uint64)
    acc = np.empty((i1 - i0, chunk), dtype=np.uint16)
    for j0 in range(i0, n, chunk):
        m = min(chunk, n - j0)
        d, x = acc[:, :m], xor[:, :m]
        d.fill(0)
        for w in range(words.shape[0]):
            np.bitwise_xor(words[w, i0:i1, None], words[w, None, j0:j0 + m], out=x)
            d += np.bitwise_count(x)
        if j0 < i1:  # the block's own rows: only j > i
            rows = np.arange(i0, i1)[:, None]
            cols = np.arange(j0, j0 + m)[None, :]
            sel = d[cols > rows]
        else:
            sel = d.ravel()
        out += np.bincount(sel, minlength=nbits + 1)[:nbits + 1]
    return out


def pair_histogram(packed: np.ndarray, nbits: int, threads: int | None = None,
                   block: int = 256, chunk: int = 4096) -> np.ndarray:
    """Counts of Hamming distances 0..nbits over all pairs i < j of ``packed`` (uint64 rows)."""
    n = packed.shape[0]
    threads = threads or min(os.cpu_count() or 1, 8)
    words = np.ascontiguousarray(packed.T)
    starts = list(range(0, n, block))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = pool.map(lambda i0: _block_histogram(words, i0, min(i0 + block, n), nbits,
                                                     chunk), starts)
        return np.sum(list(parts), axis=0, dtype=np.int64) if starts else \
            np.zeros(nbits + 1, dtype=np.int64)


def sampled_histogram(packed: np.ndarray, nbits: int, pairs: int, seed: int
                      ) -> np.ndarray:
    """Distances of ``pairs`` pairs i != j drawn uniformly (with replacement) from all pairs."""
    n = packed.shape[0]
    rng = np.random.default_rng(seed)
    out = np.zeros(nbits + 1, dtype=np.int64)
    step = 1 << 20
    for k in range(0, pairs, step):
        m = min(step, pairs - k)
        i = rng.integers(0, n, m)
        j = (i + rng.integers(1, n, m)) % n   # uniform over j != i
        d = np.bitwise_count(packed[i] ^ packed[j]).sum(axis=1)
        out += np.bincount(d, minlength=nbits + 1)[:nbits + 1]
    return out


def count_pairs(packed: np.ndarray, nbits: int, pairs: int | None, seed: int
                ) -> tuple[np.ndarray, bool, float]:
    """(histogram, exhaustive, seconds): every pair when ``pairs`` is None or at least the
    number of pairs, else a uniform sample of ``pairs``."""
    n = packed.shape[0]
    total = n * (n - 1) // 2
    t0 = time.perf_counter()
    if pairs is None or pairs >= total:
        hist, exhaustive = pair_histogram(packed, nbits), True
    else:
        hist, exhaustive = sampled_histogram(packed, nbits, pairs, seed), False
    return hist, exhaustive, time.perf_counter() - t0
