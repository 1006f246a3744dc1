"""Statistics for scorecards, gates and the dashboard (pure Python: no SciPy or torch needed).

* Wilson score intervals for every rate.
* Paired comparisons of two runs on the same samples: exact McNemar tests on discordant pairs.
* Unpaired comparisons: Newcombe's score interval for a difference, Fisher's exact test.
* Several comparisons at once: Holm's step-down adjustment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    if successes == 0 or successes == n:  # the closed-form bound is exact here; avoid 1e-18 noise
        edge = z * z / (n + z * z)
        return (0.0, edge) if successes == 0 else (1 - edge, 1.0)
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact_one_sided(lost: int, gained: int) -> float:
    """P(X >= lost) for X ~ Binomial(lost + gained, 1/2): the exact one-sided McNemar p-value
    for "worse" given ``lost`` discordant pairs that got worse and ``gained`` that got better."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(lost, n + 1))
    return min(1.0, tail / 2**n)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def newcombe_interval(k1: int, n1: int, k2: int, n2: int,
                      z: float = 1.959963984540054) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (independent samples; his method 10), built
    from the two Wilson intervals."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def newcombe_one_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value for p1 > p2 from :func:`newcombe_interval`: the level at which the
    interval's lower bound reaches 0 (found by bisection on z)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    d = k1 / n1 - k2 / n2
    if d == 0:
        return 0.5
    if d < 0:
        return 1.0 - newcombe_one_sided(k2, n2, k1, n1)
    lo, hi = 0.0, 40.0
    if newcombe_interval(k1, n1, k2, n2, hi)[0] > 0:
        return _normal_sf(hi)
    for _ in range(100):
        mid = (lo + hi) / 2
        if newcombe_interval(k1, n1, k2, n2, mid)[0] > 0:
            lo = mid
        else:
            hi = mid
    return _normal_sf((lo + hi) / 2)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error rate control, any dependence)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _log_binom_pmf(k: int, n: int) -> float:
    """log P(X = k) for X ~ Binomial(n, 1/2)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError("counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.exp(_log_binom_pmf(i, n)) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def _log_hypergeom(a: int, row1: int, row2: int, col1: int) -> float:
    """log P(top-left cell = a) with the margins of a 2x2 table fixed."""
    n = row1 + row2

    def lcomb(m: int, r: int) -> float:
        return math.lgamma(m + 1) - math.lgamma(r + 1) - math.lgamma(m - r + 1)

    return lcomb(row1, a) + lcomb(row2, col1 - a) - lcomb(n, col1)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for ``k1/n1`` vs ``k2/n2`` successes.

    Sums the probabilities of all tables (same margins) no more likely than the observed one.
    """
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError("need 0 <= k <= n for both groups")
    if n1 == 0 or n2 == 0:
        return 1.0
    col1 = k1 + k2
    lo, hi = max(0, col1 - n2), min(col1, n1)
    observed = _log_hypergeom(k1, n1, n2, col1)
    total = 0.0
    for a in range(lo, hi + 1):
        lp = _log_hypergeom(a, n1, n2, col1)
        if lp <= observed + 1e-7:
            total += math.exp(lp)
    return min(1.0, total)
