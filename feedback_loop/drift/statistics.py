"""Two-sample drift statistics: a reference sample against a window.

Every statistic is computed from *counts over a shared sorted support* by a
``*_from_counts`` function that accepts stacked rows (shape ``(..., u)``) and
returns one value per row, so the same vectorised code scores a live window
(one row) and thousands of bootstrap replicates in
:mod:`feedback_loop.drift.calibration`. The sample-level functions
(:func:`ks_statistic`, :func:`psi`, ...) build those counts from two samples.

Numeric tests (:data:`NUMERIC_TESTS`)
    ``"ks"``
        Kolmogorov-Smirnov ``D = max |F_ref - F_win|`` (what
        ``scipy.stats.ks_2samp`` reports as ``statistic``).
    ``"psi"``
        Population stability index ``sum (q - p) * ln(q / p)`` over
        :data:`PSI_BINS` quantile bins of the reference, with bin proportions
        clipped below at :data:`PSI_EPS` so an empty bin costs a finite amount.
    ``"wasserstein"``
        Wasserstein-1 (earth mover's) distance ``integral |F_ref - F_win| dx``,
        in the feature's unit (``scipy.stats.wasserstein_distance``).

Categorical tests (:data:`CATEGORICAL_TESTS`)
    ``"chi2"``
        Pearson's ``sum (O - E)**2 / E`` of the window counts ``O`` against
        ``E = window_size * p``, where ``p`` are the reference proportions of
        the reference categories plus one *other* bucket, smoothed by
        :data:`CHI2_SMOOTHING` pseudo-counts each:
        ``p_k = (c_k + s) / (n + s * K)``, ``K`` = categories + 1.
    ``"js"``
        Jensen-Shannon distance (square root of the divergence, base 2, in
        ``[0, 1]``) between the reference and window proportions
        (``scipy.spatial.distance.jensenshannon(p, q, base=2)``).

    For both, *other* pools the categories unseen in the reference and, on
    both sides, those seen fewer than :data:`CATEGORY_MIN_COUNT` times: rare
    categories make sparse cells whose noise would dominate the statistic
    (the usual "expected count >= 5" rule of the chi-square test), and a
    long tail of them is where resampling the reference is least faithful.

"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CATEGORICAL_TESTS",
    "CATEGORY_MIN_COUNT",
    "CHI2_SMOOTHING",
    "NUMERIC_TESTS",
    "PSI_BINS",
    "PSI_EPS",
    "TESTS",
    "bin_starts",
    "category_counts",
    "chi2_from_counts",
    "chi2_statistic",
    "jensen_shannon_distance",
    "js_from_counts",
    "ks_from_counts",
    "ks_statistic",
    "numeric_counts",
    "psi",
    "psi_edges",
    "psi_from_counts",
    "wasserstein_distance",
    "wasserstein_from_counts",
]

#: Tests for numeric features.
NUMERIC_TESTS: tuple[str, ...] = ("ks", "psi", "wasserstein")
#: Tests for categorical features.
CATEGORICAL_TESTS: tuple[str, ...] = ("chi2", "js")
#: Every test name.
TESTS: tuple[str, ...] = NUMERIC_TESTS + CATEGORICAL_TESTS
#: Number of reference-quantile bins of the PSI (fewer when quantiles tie).
PSI_BINS = 10
#: Lower clip of bin proportions in the PSI.
PSI_EPS = 1e-4
#: Pseudo-count added to every reference category (and to *other*) by ``chi2``.
CHI2_SMOOTHING = 0.5
#: Categories seen fewer times in the reference are pooled into *other* (``chi2``, ``js``).
CATEGORY_MIN_COUNT = 5

FloatArray = NDArray[np.float64]


def _cdfs(ref_counts: ArrayLike, win_counts: ArrayLike) -> tuple[FloatArray, FloatArray]:
    rc = np.asarray(ref_counts, dtype=np.float64)
    wc = np.asarray(win_counts, dtype=np.float64)
    return np.cumsum(rc, axis=-1) / rc.sum(axis=-1, keepdims=True), np.cumsum(wc, axis=-1) / wc.sum(
        axis=-1, keepdims=True
    )


def ks_from_counts(ref_counts: ArrayLike, win_counts: ArrayLike) -> FloatArray:
    """Kolmogorov-Smirnov ``D`` from counts over a sorted numeric support.

    Examples
    --------
    >>> float(ks_from_counts([1, 1, 0], [0, 1, 1]))
    0.5
    >>> ks_from_counts([[1, 1, 0], [1, 0, 1]], [[0, 1, 1], [1, 0, 1]])
    array([0.5, 0. ])

    """
    rc, wc = np.asarray(ref_counts), np.asarray(win_counts)
    if rc.dtype.kind in "iu" and wc.dtype.kind in "iu":
        # exact integer numerators, so equal values compare equal whatever computed them
        n = rc.sum(axis=-1, keepdims=True)
        w = wc.sum(axis=-1, keepdims=True)
        num = np.abs(np.cumsum(rc, axis=-1) * w - np.cumsum(wc, axis=-1) * n).max(axis=-1)
        return num / (n * w)[..., 0]
    fr, fw = _cdfs(rc, wc)
    return np.abs(fr - fw).max(axis=-1)


def wasserstein_from_counts(support: ArrayLike, ref_counts: ArrayLike, win_counts: ArrayLike) -> FloatArray:
    """Wasserstein-1 distance from counts over the sorted ``support`` values.

    Examples
    --------
    >>> float(wasserstein_from_counts([0.0, 1.0, 3.0], [1, 1, 0], [0, 1, 1]))
    1.5

    """
    x = np.asarray(support, dtype=np.float64)
    fr, fw = _cdfs(ref_counts, win_counts)
    return (np.abs(fr - fw)[..., :-1] * np.diff(x)).sum(axis=-1)


def psi_from_counts(ref_counts: ArrayLike, win_counts: ArrayLike, eps: float = PSI_EPS) -> FloatArray:
    """Population stability index from counts per bin.

    Examples
    --------
    >>> float(psi_from_counts([50, 50], [50, 50]))
    0.0
    >>> round(float(psi_from_counts([50, 50], [80, 20])), 6)  # 0.3 * ln(0.8/0.5) - 0.3 * ln(0.2/0.5)
    0.415888

    """
    rc = np.asarray(ref_counts, dtype=np.float64)
    wc = np.asarray(win_counts, dtype=np.float64)
    p = np.maximum(rc / rc.sum(axis=-1, keepdims=True), eps)
    q = np.maximum(wc / wc.sum(axis=-1, keepdims=True), eps)
    return ((q - p) * np.log(q / p)).sum(axis=-1)


def _pool(
    ref_counts: ArrayLike, win_counts: ArrayLike, min_count: int
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_], FloatArray, FloatArray]:
    """Counts, the mask of kept categories (reference count >= ``min_count``), and the *other* counts."""
    rc = np.asarray(ref_counts, dtype=np.float64)
    wc = np.asarray(win_counts, dtype=np.float64)
    keep = rc >= max(min_count, 1)
    return rc, wc, keep, np.where(keep, 0.0, rc).sum(axis=-1), np.where(keep, 0.0, wc).sum(axis=-1)


def chi2_from_counts(
    ref_counts: ArrayLike,
    win_counts: ArrayLike,
    smoothing: float = CHI2_SMOOTHING,
    min_count: int = CATEGORY_MIN_COUNT,
) -> FloatArray:
    """Smoothed chi-square of window counts against reference proportions.

    Categories whose reference count is below ``min_count`` (0: unseen in
    the reference) are pooled into the *other* bucket, on both sides.

    Examples
    --------
    >>> # reference a:3 b:1, window a:1 b:1 c:2 (c is unseen: other = 2)
    >>> # p = (3.5, 1.5, 0.5) / 5.5, E = 4 * p
    >>> round(float(chi2_from_counts([3, 1, 0], [1, 1, 2], min_count=1)), 6)
    8.309524
    >>> # with min_count=2, b joins other: p = (3.5, 1.5) / 5, E = (2.8, 1.2), O = (1, 3)
    >>> round(float(chi2_from_counts([3, 1, 0], [1, 1, 2], min_count=2)), 6)
    3.857143

    """
    rc, wc, keep, other_r, other_w = _pool(ref_counts, win_counts, min_count)
    n = rc.sum(axis=-1)
    w = wc.sum(axis=-1)
    denom = n + smoothing * (keep.sum(axis=-1) + 1)
    expected = (w / denom)[..., None] * (rc + smoothing)
    kept = np.where(keep, (wc - expected) ** 2 / expected, 0.0).sum(axis=-1)
    other_expected = w * (other_r + smoothing) / denom
    return kept + (other_w - other_expected) ** 2 / other_expected


def _js_terms(p: FloatArray, q: FloatArray) -> FloatArray:
    """Elementwise ``p/2 log2(2p/(p+q)) + q/2 log2(2q/(p+q))`` (0 where a side is 0)."""
    m = p + q
    safe_m = np.where(m > 0, m, 1.0)
    tp = np.where(p > 0, p * np.log2(2.0 * np.where(p > 0, p, 1.0) / safe_m), 0.0)
    tq = np.where(q > 0, q * np.log2(2.0 * np.where(q > 0, q, 1.0) / safe_m), 0.0)
    return 0.5 * (tp + tq)


def js_from_counts(ref_counts: ArrayLike, win_counts: ArrayLike, min_count: int = CATEGORY_MIN_COUNT) -> FloatArray:
    """Jensen-Shannon distance (base 2) between the two count profiles.

    Categories whose reference count is below ``min_count`` are pooled into
    *other* on both sides (categories unseen in the reference always are,
    which does not change the distance).

    Examples
    --------
    >>> float(js_from_counts([1, 0], [0, 1], min_count=1))
    1.0
    >>> float(js_from_counts([2, 2], [1, 1], min_count=1))
    0.0
    >>> float(js_from_counts([9, 1, 1], [9, 0, 2], min_count=5))  # the two rare ones pooled: same profile
    0.0

    """
    rc, wc, keep, other_r, other_w = _pool(ref_counts, win_counts, min_count)
    n = rc.sum(axis=-1, keepdims=True)
    w = wc.sum(axis=-1, keepdims=True)
    kept = np.where(keep, _js_terms(rc / n, wc / w), 0.0).sum(axis=-1)
    js = kept + _js_terms(other_r / n[..., 0], other_w / w[..., 0])
    return np.sqrt(np.clip(js, 0.0, 1.0))


def _finite(values: ArrayLike, name: str) -> FloatArray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return x


def numeric_counts(reference: ArrayLike, window: ArrayLike) -> tuple[FloatArray, NDArray[np.int64], NDArray[np.int64]]:
    """The sorted union ``support`` of two numeric samples and each one's counts on it.

    Raises
    ------
    ValueError
        If a sample is empty or has a non-finite value.

    Examples
    --------
    >>> numeric_counts([2.0, 1.0, 2.0], [3.0])
    (array([1., 2., 3.]), array([1, 2, 0]), array([0, 0, 1]))

    """
    r, w = _finite(reference, "reference"), _finite(window, "window")
    support, inverse = np.unique(np.concatenate([r, w]), return_inverse=True)
    u = support.size
    return support, np.bincount(inverse[: r.size], minlength=u), np.bincount(inverse[r.size :], minlength=u)


def category_counts(
    reference: Iterable[Hashable], window: Iterable[Hashable]
) -> tuple[list[Any], NDArray[np.int64], NDArray[np.int64]]:
    """Categories (reference ones in sorted order, then unseen ones) and each sample's counts.

    Examples
    --------
    >>> category_counts(["b", "a", "b"], ["c", "a"])
    (['a', 'b', 'c'], array([1, 2, 0]), array([1, 0, 1]))

    """
    rc, wc = Counter(reference), Counter(window)
    if not rc:
        raise ValueError("reference is empty")
    if not wc:
        raise ValueError("window is empty")
    cats = sorted(rc, key=str) + sorted((k for k in wc if k not in rc), key=str)
    return (
        cats,
        np.array([rc.get(k, 0) for k in cats], dtype=np.int64),
        np.array([wc.get(k, 0) for k in cats], dtype=np.int64),
    )


def psi_edges(reference: ArrayLike, bins: int = PSI_BINS) -> FloatArray:
    """Interior bin edges of the PSI: the distinct ``i / bins`` quantiles of the reference.

    A value ``x`` falls in bin ``searchsorted(edges, x, side="right")``.

    Examples
    --------
    >>> psi_edges(range(1, 11), bins=4).tolist()
    [3.25, 5.5, 7.75]
    >>> psi_edges([1, 1, 1, 2], bins=4).tolist()  # tied quantiles: fewer bins
    [1.0, 1.25]

    """
    r = _finite(reference, "reference")
    return np.unique(np.quantile(r, np.arange(1, bins) / bins))


def bin_starts(edges: ArrayLike, support: ArrayLike) -> NDArray[np.intp]:
    """Start index, in the sorted ``support``, of each non-empty PSI bin.

    Counts over the support become counts per bin with
    ``numpy.add.reduceat(counts, bin_starts(edges, support), axis=-1)``.

    Examples
    --------
    >>> bin_starts([1.5], [0.0, 1.0, 2.0, 3.0]).tolist()
    [0, 2]

    """
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(support, dtype=np.float64), side="right")
    return np.flatnonzero(np.r_[True, np.diff(bins) > 0])


def ks_statistic(reference: ArrayLike, window: ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov ``D``.

    Examples
    --------
    >>> ks_statistic([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0])
    0.5

    """
    _, rc, wc = numeric_counts(reference, window)
    return float(ks_from_counts(rc, wc))


def wasserstein_distance(reference: ArrayLike, window: ArrayLike) -> float:
    """Wasserstein-1 distance between the two empirical distributions.

    Examples
    --------
    >>> wasserstein_distance([0.0, 1.0], [2.0, 3.0])
    2.0

    """
    support, rc, wc = numeric_counts(reference, window)
    return float(wasserstein_from_counts(support, rc, wc))


def psi(reference: ArrayLike, window: ArrayLike, bins: int = PSI_BINS, eps: float = PSI_EPS) -> float:
    """Population stability index over ``bins`` reference-quantile bins.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.arange(1000.0)
    >>> psi(ref, ref[::10])  # every bin holds a tenth of both
    0.0
    >>> round(psi(ref, ref[:500]), 4)  # 5 * 0.1 * ln(2) + 5 * 0.0999 * ln(0.1 / 1e-4)
    3.797

    """
    r = _finite(reference, "reference")
    edges = psi_edges(r, bins)
    n_bins = edges.size + 1
    rc = np.bincount(np.searchsorted(edges, r, side="right"), minlength=n_bins)
    wc = np.bincount(np.searchsorted(edges, _finite(window, "window"), side="right"), minlength=n_bins)
    return float(psi_from_counts(rc, wc, eps))


def chi2_statistic(
    reference: Iterable[Hashable],
    window: Iterable[Hashable],
    smoothing: float = CHI2_SMOOTHING,
    min_count: int = CATEGORY_MIN_COUNT,
) -> float:
    """Smoothed chi-square of a categorical window against the reference proportions.

    Examples
    --------
    >>> round(chi2_statistic(["a", "a", "a", "b"], ["a", "b", "c", "c"], min_count=1), 6)
    8.309524

    """
    _, rc, wc = category_counts(reference, window)
    return float(chi2_from_counts(rc, wc, smoothing, min_count))


def jensen_shannon_distance(
    reference: Iterable[Hashable], window: Iterable[Hashable], min_count: int = CATEGORY_MIN_COUNT
) -> float:
    """Jensen-Shannon distance (base 2) between two categorical samples.

    Examples
    --------
    >>> jensen_shannon_distance(["a", "b"], ["b", "a", "a", "b"], min_count=1)
    0.0
    >>> jensen_shannon_distance(["a"], ["b"], min_count=1)
    1.0

    """
    _, rc, wc = category_counts(reference, window)
    return float(js_from_counts(rc, wc, min_count))
