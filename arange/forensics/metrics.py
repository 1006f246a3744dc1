"""Localisation and detection metrics (numpy only), with bootstrap intervals over images.

* ``pixel_auc``: ROC AUC over all pixels of all images pooled (ties count one half), exact
  (average ranks).
* ``f1`` / ``iou`` per image at a threshold on the probability map; a row reports the mean over
  forged images. ``best_threshold_f1`` picks the one threshold (shared by all images) that
  maximises the mean F1 on the scored images themselves, so it is an optimistic upper bound.
* ``boundary_excluded_f1``: F1 with the pixels within ``band`` pixels of the mask edge left out
  (where the ground truth of a pasted fill is least certain).
* ``image_auc``: forged vs untouched images by the detector's image score.
* intervals: 95% percentile bootstrap over images (seeded, so reproducible).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for binary ``labels``; None when one class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks of ties
    boundaries = np.nonzero(np.diff(sorted_s))[0] + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of a binary prediction; 1.0 when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    tp = int((p & t).sum())
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def boundary_band(mask: np.ndarray, band: int) -> np.ndarray:
    """Pixels within ``band`` pixels (chessboard distance) of the mask's edge."""
    from scipy.ndimage import binary_dilation, binary_erosion
    m = np.asarray(mask, dtype=bool)
    if band <= 0 or not m.any():
        return np.zeros_like(m)
    st = np.ones((3, 3), dtype=bool)
    return binary_dilation(m, st, iterations=band) & ~binary_erosion(m, st, iterations=band,
                                                                       border_value=1)


def boundary_excluded_f1(pred: np.ndarray, truth: np.ndarray, band: int = 2) -> float:
    keep = ~boundary_band(truth, band)
    return f1_score(np.asarray(pred, bool)[keep], np.asarray(truth, bool)[keep])


def per_image(maps: np.ndarray, masks: np.ndarray, threshold: float, band: int = 2
              ) -> dict[str, np.ndarray]:
    """Per-image F1, IoU and boundary-excluded F1 at ``threshold``."""
    pred = maps >= threshold
    return {"f1": np.array([f1_score(p, t) for p, t in zip(pred, masks, strict=True)]),
            "iou": np.array([iou_score(p, t) for p, t in zip(pred, masks, strict=True)]),
            "f1_boundary": np.array([boundary_excluded_f1(p, t, band)
                                     for p, t in zip(pred, masks, strict=True)])}


def best_threshold_f1(maps: np.ndarray, masks: np.ndarray,
                      grid: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, mean per-image F1) maximising the mean F1 over one shared threshold."""
    grid = np.linspace(0.02, 0.98, 49) if grid is None else grid
    t = masks.reshape(len(masks), -1).astype(bool)
    m = maps.reshape(len(maps), -1)
    best = (0.5, -1.0)
    n_true = t.sum(axis=1)
    for thr in grid:
        p = m >= thr
        tp = (p & t).sum(axis=1)
        denom = p.sum(axis=1) + n_true
        f1 = np.where(denom == 0, 1.0, 2.0 * tp / np.maximum(denom, 1))
        if f1.mean() > best[1]:
            best = (float(thr), float(f1.mean()))
    return best


def bootstrap_mean(values: np.ndarray, rounds: int = 1000, seed: int = 0
                   ) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (rounds, v.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _hist_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC from per-bin counts (rows are resamples); ties within a bin count one half."""
    cum_neg = np.cumsum(neg, axis=-1) - neg
    num = (pos * (cum_neg + 0.5 * neg)).sum(axis=-1)
    den = pos.sum(axis=-1) * neg.sum(axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def pixel_auc_ci(maps: np.ndarray, masks: np.ndarray, rounds: int = 300, seed: int = 0,
                 bins: int = 1024) -> tuple[float, float]:
    """Bootstrap interval of the pooled pixel AUC, resampling images; scores are binned to
    ``bins`` levels inside the resampling (the point estimate itself is exact)."""
    n = len(maps)
    if n == 0:
        return (0.0, 0.0)
    idx = np.clip((maps.reshape(n, -1) * bins).astype(np.int64), 0, bins - 1)
    t = masks.reshape(n, -1).astype(bool)
    pos = np.stack([np.bincount(idx[i][t[i]], minlength=bins) for i in range(n)])
    neg = np.stack([np.bincount(idx[i][~t[i]], minlength=bins) for i in range(n)])
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(rounds)])
    aucs = _hist_auc(counts @ pos, counts @ neg)
    aucs = aucs[np.isfinite(aucs)]
    if aucs.size == 0:
        return (0.0, 0.0)
    return float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))


def paired_bootstrap(stat: Callable[[np.ndarray, np.ndarray], float | None], a: np.ndarray,
                     b: np.ndarray, rounds: int = 500, seed: int = 0) -> tuple[float, float]:
    """Interval of ``stat(a', b')`` resampling ``a`` and ``b`` independently (two groups)."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(rounds):
        v = stat(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
        if v is not None:
            vals.append(v)
    if not vals:
        return (0.0, 0.0)
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def image_auc(forged_scores: np.ndarray, real_scores: np.ndarray) -> float | None:
    s = np.concatenate([forged_scores, real_scores])
    y = np.concatenate([np.ones(len(forged_scores), bool), np.zeros(len(real_scores), bool)])
    return roc_auc(s, y)


# ---------------------------------------------------------------------------- per-image evidence
# What a regression gate resamples: per image, the pixel scores of forged and of real pixels as
# histograms (HIST_BINS equal bins over [0, 1]), so the pooled pixel AUC of any resample of the
# images can be recomputed without storing the maps.

HIST_BINS = 64


def score_histograms(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forged-pixel, real-pixel) histograms per image, each (N, HIST_BINS) int64."""
    n = len(maps)
    bins = np.minimum((np.asarray(maps, np.float64) * HIST_BINS).astype(np.int64),
                      HIST_BINS - 1).reshape(n, -1)
    m = np.asarray(masks, bool).reshape(n, -1)
    offset = np.arange(n)[:, None] * HIST_BINS
    pos = np.bincount((bins + offset)[m], minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    neg = np.bincount((bins + offset)[~m], minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    return pos, neg


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of pooled scores given as histograms over the same bins (ties count half)."""
    p = np.asarray(pos, np.float64)
    q = np.asarray(neg, np.float64)
    n_pos, n_neg = p.sum(), q.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(q)[:-1]])
    return float((p * (below + 0.5 * q)).sum() / (n_pos * n_neg))
