"""Exact null distribution of the two-sample Kolmogorov-Smirnov ``D`` without ties.

When the reference and the window are samples of one continuous law, the
merged order of their values is a uniformly random interleaving: a uniform
random lattice path from ``(0, 0)`` to ``(n, m)`` (a step right for a
reference value, up for a window value), and ``n * m * D`` is the path's
largest ``|i * m - j * n|``. The probability of staying inside a band is
computed by dynamic programming over the anti-diagonals ``i + j = k``, as the
probability ``u(i, j)`` that a uniform path to ``(i, j)`` stayed inside:
``u(i, j) = i / k * u(i - 1, j) + j / k * u(i, j - 1)`` (no huge binomial
coefficients), restricted to the band, so a call costs ``O((n + m) * width)``
with ``width ~ 2 * t / (n + m)``.

This is the distribution the two-sample bootstrap of
:mod:`feedback_loop.drift.bootstrap` estimates for a reference without ties,
computed without Monte Carlo error.

"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ks_exact_sf", "ks_exact_threshold"]

_CANDIDATES = 49


def ks_exact_sf(n: int, m: int, t: ArrayLike) -> NDArray[np.float64]:
    """``P(n * m * D > t)`` for integers ``t``, samples of sizes ``n`` and ``m`` without ties.

    Examples
    --------
    >>> # n = m = 1: D = 1 always
    >>> ks_exact_sf(1, 1, [0, 1]).tolist()
    [1.0, 0.0]
    >>> # n = m = 2: paths RRUU and UURR (2 of 6) have 4 * D = 4, the others 2
    >>> [round(p, 12) for p in ks_exact_sf(2, 2, [1, 2, 3, 4]).tolist()]
    [1.0, 0.333333333333, 0.333333333333, 0.0]

    """
    if n < 1 or m < 1:
        raise ValueError(f"sample sizes must be >= 1, got {n!r} and {m!r}")
    ts = np.atleast_1d(np.asarray(t, dtype=np.int64))
    tmax = int(ts.max())
    if tmax < 0:
        return np.ones(ts.shape, dtype=np.float64)
    total = n + m
    # column i + 1 holds u(i, k - i); column 0 is a zero pad for i - 1 = -1
    bufs = [np.zeros((ts.size, n + 2)), np.zeros((ts.size, n + 2))]
    bufs[0][:, 1] = 1.0
    spans = [(0, 0), (0, -1)]
    for k in range(1, total + 1):
        prev, cur = bufs[(k - 1) & 1], bufs[k & 1]
        old_lo, old_hi = spans[k & 1]
        cur[:, old_lo + 1 : old_hi + 2] = 0.0
        lo = max(0, k - m, -((tmax - k * n) // total))
        hi = min(n, k, (k * n + tmax) // total)
        if lo <= hi:
            i = np.arange(lo, hi + 1)
            val = (i / k) * prev[:, lo : hi + 1] + ((k - i) / k) * prev[:, lo + 1 : hi + 2]
            inside = np.abs(i * m - (k - i) * n) <= ts[:, None]
            cur[:, lo + 1 : hi + 2] = np.where(inside, val, 0.0)
        spans[k & 1] = (lo, hi)
    p_inside = bufs[total & 1][:, n + 1]
    return np.clip(1.0 - p_inside, 0.0, 1.0)


@lru_cache(maxsize=256)
def ks_exact_threshold(n: int, m: int, alpha: float) -> float:
    """The smallest attainable ``d`` with ``P(D > d) <= alpha`` (samples without ties).

    A pure function of its arguments, kept for the process's life (about 60 ms per call at
    ``n = 1000, m = 500``): every model version with references of one size shares it.

    Flagging ``D > d`` then has a false-alarm probability of at most
    ``alpha``, as close to it as ``D``'s lattice of values allows.

    Examples
    --------
    >>> d = ks_exact_threshold(1000, 500, 0.01)
    >>> d  # Kolmogorov's asymptotic value: 1.628 * sqrt(1500 / 500000) = 0.0892
    0.088
    >>> float(ks_exact_sf(1000, 500, [round(d * 500000)])[0]) <= 0.01
    True

    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    g = math.gcd(n, m)
    nm = n * m
    c = math.sqrt(-0.5 * math.log(alpha / 2.0)) * math.sqrt((n + m) / nm) * nm
    lo, hi = -g, nm  # P(nmD > lo) > alpha >= P(nmD > hi), both multiples of g
    cands = np.unique(
        np.clip(np.round(np.linspace(0.8 * c, 1.25 * c, _CANDIDATES) / g), 0, nm // g).astype(np.int64) * g
    )
    while True:
        sf = ks_exact_sf(n, m, cands)
        ok = sf <= alpha
        if ok.any():
            hi = min(hi, int(cands[ok][0]))
        if (~ok).any():
            lo = max(lo, int(cands[~ok][-1]))
        if hi - lo <= g:
            return hi / nm
        steps = (hi - lo) // g
        cands = lo + g * np.unique(np.linspace(1, steps - 1, min(_CANDIDATES, steps - 1)).round().astype(np.int64))
