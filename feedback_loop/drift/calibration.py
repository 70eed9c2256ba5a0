"""Drift thresholds calibrated on the reference itself.

A fixed rule such as "PSI > 0.1" has a false-alarm rate that depends on the
window size, the reference size and the feature's distribution. Instead, the
threshold of each (feature, test) pair is the ``1 - alpha`` quantile of the
statistic's distribution *under no drift*, estimated on the reference by the
two-sample bootstrap of :mod:`feedback_loop.drift.bootstrap` (pseudo-reference
and pseudo-window both resampled from the reference), or, for ``"ks"`` on a
reference without ties, computed exactly (:mod:`feedback_loop.drift.ks_exact`,
the distribution that bootstrap converges to).

* The threshold is the conservative order statistic: the ``k``-th smallest of
  ``B`` replicates with ``k = ceil((B + 1) * (1 - alpha))``, so that a new
  statistic exchangeable with the replicates exceeds it with probability at
  most ``alpha``. This needs ``B + 1 >= 1 / alpha``; :func:`resamples_for`
  raises ``B`` so that at least :data:`MIN_TAIL` replicates lie above the
  threshold (a quantile read off one or two extreme replicates is mostly
  noise, and noise in a threshold raises the average false-alarm rate).
* With ``m`` (feature, test) pairs monitored on each window, each pair gets
  ``alpha = false_alarm_rate / m`` (:func:`bonferroni`), so the probability
  that a window raises any false alarm is at most ``false_alarm_rate``.
* The guarantee is on average over references: given one particular
  reference, the rate on unchanged data can be higher or lower (a reference
  is itself a sample), as for any two-sample test.

"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, MutableMapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from feedback_loop.drift.bootstrap import kind_of_tests, null_distribution
from feedback_loop.drift.ks_exact import ks_exact_threshold

__all__ = [
    "EXACT_KS_MAX_TIE",
    "MIN_TAIL",
    "bonferroni",
    "calibrate",
    "conservative_quantile",
    "resamples_for",
]

#: Minimum number of bootstrap replicates above a calibrated threshold.
MIN_TAIL = 5

#: Largest share of the reference one value may hold for ``"ks"`` to use the exact tie-free
#: distribution (see the module notes).
EXACT_KS_MAX_TIE = 0.01


def bonferroni(false_alarm_rate: float, pairs: int) -> float:
    """Per-pair level so that ``pairs`` tests together alarm with probability at most ``false_alarm_rate``.

    Examples
    --------
    >>> bonferroni(0.01, 4)
    0.0025

    """
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs!r}")
    return false_alarm_rate / pairs


def resamples_for(alpha: float, minimum: int = 200) -> int:
    """Number of bootstrap replicates: ``minimum``, raised so that :data:`MIN_TAIL` lie above the threshold.

    Examples
    --------
    >>> resamples_for(0.01), resamples_for(0.001), resamples_for(0.5, minimum=10)
    (499, 4999, 10)

    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return max(int(minimum), math.ceil(MIN_TAIL / alpha - 1e-9) - 1)


def conservative_quantile(values: ArrayLike, alpha: float) -> float:
    """The ``ceil((B + 1) * (1 - alpha))``-th smallest of the ``B`` values.

    Raises
    ------
    ValueError
        If ``B + 1 < 1 / alpha`` (no order statistic is conservative enough).

    Examples
    --------
    >>> conservative_quantile(range(1, 100), 0.01)  # k = ceil(100 * 0.99) = 99
    99.0
    >>> conservative_quantile(range(1, 100), 0.05)  # k = 95
    95.0

    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    b = x.size
    k = math.ceil((b + 1) * (1.0 - alpha) - 1e-9)
    if k > b:
        raise ValueError(
            f"{b} values cannot give a conservative {1.0 - alpha:g} quantile; need >= {math.ceil(1 / alpha) - 1}"
        )
    return float(x[max(k, 1) - 1])


def calibrate(
    reference: ArrayLike | Mapping[Hashable, int] | Iterable[Hashable],
    window_size: int,
    tests: Sequence[str],
    alpha: float,
    n_resamples: int = 200,
    rng: np.random.Generator | int | Sequence[int] | None = None,
    *,
    resample_reference: bool = True,
    exact_ks: bool = True,
    memo: MutableMapping[tuple[int, int, float], float] | None = None,
) -> dict[str, float]:
    """Threshold of each test: its conservative ``1 - alpha`` quantile under no drift.

    A window whose statistic is strictly greater than its test's threshold
    is flagged as drifted.

    Parameters
    ----------
    reference, window_size, tests, rng, resample_reference
        As for :func:`~feedback_loop.drift.bootstrap.null_distribution`.
    alpha
        False-alarm probability of each test, in ``(0, 1)``.
    n_resamples
        Minimum number of bootstrap replicates, raised by :func:`resamples_for`.
    exact_ks
        For ``"ks"`` on a numeric reference whose most repeated value holds at
        most :data:`EXACT_KS_MAX_TIE` of it (and the two-sample null), use the
        exact tie-free distribution instead of the bootstrap.
    memo
        Optional cache of exact KS thresholds by ``(n, window_size, alpha)``
        (they are also kept for the process's life by
        :func:`~feedback_loop.drift.ks_exact.ks_exact_threshold`).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).normal(size=1000)
    >>> th = calibrate(ref, 500, ("ks", "psi"), alpha=0.01, rng=0)
    >>> th["ks"]  # exact: P(D > 0.088) <= 0.01 for n = 1000, w = 500
    0.088
    >>> bool(0.02 < th["psi"] < 0.1)
    True
    >>> boot = calibrate(ref, 500, ("ks",), alpha=0.01, rng=0, exact_ks=False)["ks"]
    >>> bool(abs(boot - 0.088) <= 0.004)
    True
    >>> calibrate(["a", "b"] * 50, 20, ("chi2", "js"), alpha=0.05, rng=0) == calibrate(
    ...     {"b": 50, "a": 50}, 20, ("chi2", "js"), alpha=0.05, rng=0)
    True

    """
    kind = kind_of_tests(tests)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    thresholds: dict[str, float] = {}
    rest = list(tests)
    if kind == "numeric" and "ks" in rest and exact_ks and resample_reference:
        values = np.asarray(reference, dtype=np.float64).ravel()
        n = values.size
        if n and np.unique(values, return_counts=True)[1].max() <= max(1.0, EXACT_KS_MAX_TIE * n):
            key = (n, int(window_size), float(alpha))
            if memo is not None and key in memo:
                thresholds["ks"] = memo[key]
            else:
                thresholds["ks"] = ks_exact_threshold(n, int(window_size), alpha)
                if memo is not None:
                    memo[key] = thresholds["ks"]
            rest.remove("ks")
    if rest:
        null = null_distribution(
            reference, window_size, rest, resamples_for(alpha, n_resamples), rng, resample_reference=resample_reference
        )
        thresholds.update({t: conservative_quantile(v, alpha) for t, v in null.items()})
    return {t: thresholds[t] for t in tests}
