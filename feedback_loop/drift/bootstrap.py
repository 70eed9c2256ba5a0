"""Null distributions of the drift statistics, bootstrapped from the reference.

Each replicate draws, independently and with replacement from the reference, a
pseudo-reference of the reference's size and a pseudo-window of the window's
size, and computes the statistic between them exactly as it is computed live
(same sizes, same bins and smoothing): the *two-sample* bootstrap. A live
window is a new sample, independent of the reference, so both sides of the
comparison carry sampling noise; the *one-sample* bootstrap
(``resample_reference=False``: pseudo-windows against the reference itself)
leaves the reference's noise out and gives thresholds that are too low.

Refinements, each measured on stationary data (``benchmarks/data_drift.py``):

* ``"ks"``: a draw of a value that is unique in the reference gets a random
  position in its own gap, so pseudo-samples have no ties there (the
  reference is a sample of a continuous law there, and ties would shrink
  ``D``); values tied in the reference stay tied. For a reference without
  ties this is the permutation distribution of ``D``, which
  :mod:`feedback_loop.drift.ks_exact` computes exactly.
* ``"wasserstein"``: ``W1`` is not scale-free, and a reference that happens to
  be spread out would otherwise also get a high threshold. Each replicate is
  studentised by ``J(pseudo-reference)`` and rescaled by ``J(reference)``,
  where ``J(F) = integral sqrt(F (1 - F)) dx`` is the scale of ``W1``'s
  sampling noise. (Heavy tails stay hard: a window can hold values beyond
  the reference's range, which no resample of the reference can; measured on
  lognormal data the false-alarm rate is about 1.3 times the target, against
  1.9 times without studentising. ``"ks"`` and ``"psi"`` depend on ranks only
  and have no such bias.)
* ``"psi"`` uses the reference's bins for both pseudo-samples. ``"chi2"`` and
  ``"js"`` pool categories into *other* by the pseudo-reference's counts, as
  live windows are pooled by the reference's: on a long tail of rare
  categories the bootstrap is then conservative (measured: a quarter to a
  third of the target rate on a 200-category Zipf law), while without the
  pooling it alarmed 30 times too often.

Replicates are count vectors over the reference's distinct values (a
multinomial when there are few of them, else an index draw and a
``bincount``), scored by the vectorised ``*_from_counts`` functions of
:mod:`feedback_loop.drift.statistics`, in blocks of bounded memory: time
``O(B * (n + w))``. ``"ks"`` on a reference with unique values needs the
draws' order: each replicate's draws become integer sort keys (position,
random offset in the gap, side), and numpy sorts the rows of keys, which is
several times cheaper than ordering positions with ``argsort``.

"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from feedback_loop.drift.statistics import (
    CATEGORICAL_TESTS,
    NUMERIC_TESTS,
    PSI_EPS,
    bin_starts,
    chi2_from_counts,
    js_from_counts,
    psi_edges,
    psi_from_counts,
    wasserstein_from_counts,
)

__all__ = ["kind_of_tests", "null_distribution", "wasserstein_scale"]

#: Upper bound on the number of cells held in memory per block of replicates.
_BLOCK_CELLS = 1 << 21


def kind_of_tests(tests: Sequence[str]) -> str:
    """``"numeric"`` or ``"categorical"``: the kind of feature all ``tests`` apply to.

    Raises
    ------
    ValueError
        If ``tests`` is empty, or mixes kinds, or has an unknown name.

    Examples
    --------
    >>> kind_of_tests(("ks", "psi")), kind_of_tests(["chi2"])
    ('numeric', 'categorical')

    """
    if not tests:
        raise ValueError("tests is empty")
    if all(t in NUMERIC_TESTS for t in tests):
        return "numeric"
    if all(t in CATEGORICAL_TESTS for t in tests):
        return "categorical"
    raise ValueError(
        f"tests must all be numeric {NUMERIC_TESTS} or all categorical {CATEGORICAL_TESTS}, got {tuple(tests)}"
    )


def wasserstein_scale(support: ArrayLike, counts: ArrayLike) -> NDArray[np.float64]:
    """``J = integral sqrt(F (1 - F)) dx`` of count profiles over a sorted support.

    The standard deviation of ``W1`` between two samples of sizes ``n`` and
    ``w`` from ``F`` is about ``J(F) * sqrt(1 / n + 1 / w)`` times a constant.

    Examples
    --------
    >>> float(wasserstein_scale([0.0, 1.0], [1, 1]))  # F = 1/2 on [0, 1)
    0.5

    """
    c = np.asarray(counts, dtype=np.float64)
    f = np.cumsum(c, axis=-1) / c.sum(axis=-1, keepdims=True)
    return (np.sqrt(np.clip(f * (1.0 - f), 0.0, None))[..., :-1] * np.diff(np.asarray(support, np.float64))).sum(
        axis=-1
    )


def _bincount_rows(idx: NDArray[np.intp], u: int) -> NDArray[np.int64]:
    """Row-wise ``bincount`` of a 2-D array of indices in ``[0, u)``."""
    rows = idx.shape[0]
    flat = (idx + (np.arange(rows) * u)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * u).reshape(rows, u)


def _ks_of_keys(keys: NDArray[np.integer], n: int, w: int) -> NDArray[np.float64]:
    """Row-wise KS ``D`` of merged samples given as sort keys.

    A key is ``position << 1 | side`` (side 0: reference, 1: window); equal positions tie, so
    the walk is read only at the last key of each run of equal positions. ``keys`` is sorted in
    place.
    """
    keys.sort(axis=1)  # numpy sorts integer rows with SIMD: several times faster than argsort
    wide = np.int64 if n * w >= 2**31 else np.int32
    walk = np.where(keys & 1, wide(-n), wide(w))
    np.cumsum(walk, axis=1, out=walk)
    position = keys >> 1
    inner = position[:, 1:] == position[:, :-1]  # not the last of its run: the walk is mid-tie
    np.abs(walk, out=walk)
    walk[:, :-1][inner] = 0
    return walk.max(axis=1) / (n * w)


def _ks_counts(rc: NDArray[np.int64], wc: NDArray[np.int64], n: int, w: int) -> NDArray[np.float64]:
    """Row-wise KS ``D`` from counts over the reference's atoms (every atom a tie)."""
    walk = np.cumsum(rc * w - wc * n, axis=1)
    return np.abs(walk).max(axis=1) / (n * w)


def _categorical(
    reference: Mapping[Hashable, int] | Iterable[Hashable],
    w: int,
    tests: Sequence[str],
    n_resamples: int,
    rng: np.random.Generator,
    resample_reference: bool,
) -> dict[str, NDArray[np.float64]]:
    counts = Counter(dict(reference)) if isinstance(reference, Mapping) else Counter(reference)
    atom_counts = np.array([counts[k] for k in sorted(counts, key=str) if counts[k] > 0], dtype=np.int64)
    if atom_counts.size == 0:
        raise ValueError("reference is empty")
    n, u = int(atom_counts.sum()), atom_counts.size
    probs = atom_counts / n
    inverse = np.repeat(np.arange(u), atom_counts)

    def draw(size: int, rows: int) -> NDArray[np.int64]:
        if u * 4 <= size:
            return rng.multinomial(size, probs, size=rows)
        return _bincount_rows(inverse[rng.integers(0, n, size=(rows, size))], u)

    out = {t: np.empty(n_resamples, dtype=np.float64) for t in tests}
    block = max(1, _BLOCK_CELLS // max(u, n + w))
    for lo in range(0, n_resamples, block):
        rows = min(block, n_resamples - lo)
        rc = draw(n, rows) if resample_reference else np.broadcast_to(atom_counts, (rows, u))
        wc = draw(w, rows)
        for t in tests:
            out[t][lo : lo + rows] = chi2_from_counts(rc, wc) if t == "chi2" else js_from_counts(rc, wc)
    return out


def _numeric(
    reference: ArrayLike,
    w: int,
    tests: Sequence[str],
    n_resamples: int,
    rng: np.random.Generator,
    resample_reference: bool,
) -> dict[str, NDArray[np.float64]]:
    values = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("reference must be non-empty and finite")
    n = values.size
    support, first, inverse, atom_counts = np.unique(values, return_index=True, return_inverse=True, return_counts=True)
    u = support.size
    starts = bin_starts(psi_edges(values), support) if "psi" in tests else None
    scale = float(wasserstein_scale(support, atom_counts))
    out = {t: np.empty(n_resamples, dtype=np.float64) for t in tests}
    # KS needs the draws' order where the reference has unique values (a draw gets a random
    # position in its value's gap); everything else needs only the counts over the atoms
    ordered = "ks" in tests and bool((atom_counts == 1).any())
    if ordered:
        keys = _KeyMaker(first[inverse], atom_counts[inverse] == 1, n, w)
    block = max(1, _BLOCK_CELLS // (n + w if ordered else max(u, n + w)))
    for lo in range(0, n_resamples, block):
        rows = min(block, n_resamples - lo)
        if ordered:
            raw = rng.bit_generator.random_raw((rows, n + w))
            idx = ((raw >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)  # uniform in [0, n)
            if not resample_reference:
                idx[:, :n] = np.arange(n, dtype=np.uint64)
            if len(tests) > 1:
                rc = _bincount_rows(inverse[idx[:, :n]], u)
                wc = _bincount_rows(inverse[idx[:, n:]], u)
        else:
            rc = _draw_counts(atom_counts, inverse, n, rows, rng) if resample_reference else np.broadcast_to(
                atom_counts, (rows, u))
            wc = _draw_counts(atom_counts, inverse, w, rows, rng)
        for t in tests:
            if t == "ks":
                stat = _ks_of_keys(keys.make(idx, raw, resample_reference), n, w) if ordered else _ks_counts(
                    rc, wc, n, w)
            elif t == "wasserstein":
                stat = wasserstein_from_counts(support, rc, wc)
                if resample_reference:
                    j = wasserstein_scale(support, rc)
                    stat = np.where(j > 0, stat / np.where(j > 0, j, 1.0) * scale, stat)
            else:
                stat = psi_from_counts(
                    np.add.reduceat(rc, starts, axis=-1), np.add.reduceat(wc, starts, axis=-1), PSI_EPS
                )
            out[t][lo : lo + rows] = stat
    return out


def _draw_counts(atom_counts: NDArray[np.int64], inverse: NDArray[np.intp], size: int, rows: int,
                 rng: np.random.Generator) -> NDArray[np.int64]:
    """Counts over the atoms of ``rows`` samples of ``size`` draws with replacement from the reference."""
    n, u = int(atom_counts.sum()), atom_counts.size
    if u * 4 <= size:
        return rng.multinomial(size, atom_counts / n, size=rows)
    return _bincount_rows(inverse[rng.integers(0, n, size=(rows, size))], u)


class _KeyMaker:
    """Sort keys of bootstrap draws for :func:`_ks_of_keys`.

    A draw of reference value ``i`` sits at the sorted index of its value's first copy; a draw of
    a value unique in the reference also gets a uniform random offset in its gap (its low random
    bits), so draws of one unique value do not tie; draws of a value tied in the reference tie.
    Keys are 32-bit when the positions leave at least 19 bits for the offset (references of up
    to 2,048 values: a chance of about 2e-6 that two draws of one value share an offset), else
    64-bit with 31 bits of offset.
    """

    def __init__(self, tie_pos: NDArray[np.intp], unique: NDArray[np.bool_], n: int, w: int) -> None:
        pos_bits = max(1, int(n - 1).bit_length())
        if pos_bits <= 11:
            self.dtype, self.offset_bits = np.int32, 30 - pos_bits
        else:
            self.dtype, self.offset_bits = np.int64, min(31, 62 - pos_bits)
        self.base = (tie_pos.astype(np.int64) << (self.offset_bits + 1)).astype(self.dtype)
        self.mask = np.where(unique, ((1 << self.offset_bits) - 1) << 1, 0).astype(self.dtype)
        self.side = np.zeros(n + w, dtype=self.dtype)
        self.side[n:] = 1
        self.middle = self.base[:n] | (self.mask[:n] & self.dtype(1 << self.offset_bits))
        self.n = n

    def make(self, idx: NDArray[np.uint64], raw: NDArray[np.uint64], resample_reference: bool) -> NDArray[np.integer]:
        offsets = (raw & np.uint64((1 << self.offset_bits) - 1)).astype(self.dtype) << 1
        keys = self.base[idx]
        keys |= self.mask[idx] & offsets
        keys |= self.side
        if not resample_reference:  # the reference itself, each unique value mid-gap
            keys[:, : self.n] = self.middle
        return keys


def null_distribution(
    reference: ArrayLike | Mapping[Hashable, int] | Iterable[Hashable],
    window_size: int,
    tests: Sequence[str],
    n_resamples: int,
    rng: np.random.Generator | int | Sequence[int] | None = None,
    *,
    resample_reference: bool = True,
) -> dict[str, NDArray[np.float64]]:
    """Bootstrap replicates of each test's statistic under no drift.

    Parameters
    ----------
    reference
        Numeric tests: the reference values (finite numbers). Categorical
        tests: the reference categories, or a mapping ``{category: count}``.
    window_size
        Number of values of the live windows the thresholds are for.
    tests
        Test names, all from :data:`~feedback_loop.drift.statistics.NUMERIC_TESTS`
        or all from :data:`~feedback_loop.drift.statistics.CATEGORICAL_TESTS`.
    n_resamples
        Number of replicates ``B``.
    rng
        A numpy ``Generator``, or a seed for one.
    resample_reference
        Two-sample bootstrap (``True``) or one-sample (``False``, biased low).

    Returns
    -------
    dict
        ``{test: array of B statistics}``; all tests share the same replicates.
        ``"wasserstein"`` replicates are studentised (see the module notes).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).normal(size=300)
    >>> null = null_distribution(ref, 100, ("ks", "wasserstein"), 1000, rng=1)
    >>> null["ks"].shape
    (1000,)
    >>> # the two-sample KS null is Kolmogorov's: sqrt(n w / (n + w)) * D has mean ~ 0.87
    >>> bool(0.8 < np.mean(null["ks"]) * np.sqrt(300 * 100 / 400) < 0.95)
    True
    >>> one = null_distribution(ref, 100, ("ks",), 1000, rng=1, resample_reference=False)
    >>> bool(np.mean(one["ks"]) < np.mean(null["ks"]))  # the one-sample null is too narrow
    True

    """
    kind = kind_of_tests(tests)
    w = int(window_size)
    if w < 1 or n_resamples < 1:
        raise ValueError("window_size and n_resamples must be >= 1")
    generator = np.random.default_rng(rng)
    if kind == "categorical":
        return _categorical(reference, w, tests, n_resamples, generator, resample_reference)  # type: ignore[arg-type]
    return _numeric(reference, w, tests, n_resamples, generator, resample_reference)  # type: ignore[arg-type]
