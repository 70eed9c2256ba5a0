"""Tests of feedback_loop.drift.statistics and ks_exact against independent computations.

scipy (a dependency of scikit-learn, the test extra) is the reference where it has the
statistic; PSI and the smoothed, pooled chi-square are checked against brute force.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.drift.ks_exact import ks_exact_sf, ks_exact_threshold
from feedback_loop.drift.statistics import (
    PSI_EPS,
    chi2_from_counts,
    chi2_statistic,
    jensen_shannon_distance,
    js_from_counts,
    ks_from_counts,
    ks_statistic,
    numeric_counts,
    psi,
    psi_from_counts,
    wasserstein_distance,
    wasserstein_from_counts,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_distance = pytest.importorskip("scipy.spatial.distance")

# few distinct values on purpose: ties between and within samples
values = st.one_of(st.integers(-5, 5).map(float), st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))
samples = st.lists(values, min_size=1, max_size=60)
categories = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=60)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's p-value on tiny samples
@settings(max_examples=300, deadline=None)
@given(samples, samples)
def test_ks_matches_scipy(ref: list[float], win: list[float]) -> None:
    assert ks_statistic(ref, win) == pytest.approx(scipy_stats.ks_2samp(ref, win, method="asymp").statistic, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(samples, samples)
def test_wasserstein_matches_scipy(ref: list[float], win: list[float]) -> None:
    expected = scipy_stats.wasserstein_distance(ref, win)
    assert wasserstein_distance(ref, win) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(categories, categories)
def test_js_matches_scipy(ref: list[str], win: list[str]) -> None:
    cats = sorted(set(ref) | set(win))
    p = np.array([ref.count(c) for c in cats], dtype=float)
    q = np.array([win.count(c) for c in cats], dtype=float)
    expected = scipy_distance.jensenshannon(p / p.sum(), q / q.sum(), base=2)
    assert jensen_shannon_distance(ref, win, min_count=1) == pytest.approx(expected, abs=1e-7)


def brute_chi2(ref: list[str], win: list[str], s: float, min_count: int) -> float:
    rc, wc = Counter(ref), Counter(win)
    kept = [c for c in rc if rc[c] >= min_count]
    other_r = sum(v for c, v in rc.items() if c not in kept)
    other_w = sum(v for c, v in wc.items() if c not in kept)
    n, w, k = len(ref), len(win), len(kept) + 1
    total = 0.0
    for obs, cnt in [(wc[c], rc[c]) for c in kept] + [(other_w, other_r)]:
        e = w * (cnt + s) / (n + s * k)
        total += (obs - e) ** 2 / e
    return total


@settings(max_examples=300, deadline=None)
@given(categories, categories, st.sampled_from([1, 2, 5]))
def test_chi2_matches_brute_force(ref: list[str], win: list[str], min_count: int) -> None:
    assert chi2_statistic(ref, win, 0.5, min_count) == pytest.approx(brute_chi2(ref, win, 0.5, min_count), rel=1e-9)


def test_chi2_matches_scipy_chisquare() -> None:
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    win = ["a"] * 20 + ["b"] * 20 + ["c"] * 15 + ["z"] * 5
    p = np.array([50.5, 30.5, 20.5, 0.5]) / (100 + 0.5 * 4)
    expected = scipy_stats.chisquare([20, 20, 15, 5], 60 * p).statistic
    assert chi2_statistic(ref, win) == pytest.approx(expected, rel=1e-12)


def brute_psi(ref: np.ndarray, win: np.ndarray, bins: int = 10) -> float:
    edges = sorted(set(np.quantile(ref, [i / bins for i in range(1, bins)]).tolist()))

    def shares(x: np.ndarray) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for v in x:
            counts[sum(1 for e in edges if v >= e)] += 1
        return [max(c / len(x), PSI_EPS) for c in counts]

    return sum((q - p) * math.log(q / p) for p, q in zip(shares(ref), shares(win)))


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=2, max_size=80), samples)
def test_psi_matches_brute_force(ref: list[float], win: list[float]) -> None:
    r, w = np.array(ref), np.array(win)
    assert psi(r, w) == pytest.approx(brute_psi(r, w), rel=1e-9, abs=1e-12)


def test_psi_known_values() -> None:
    ref = np.arange(1000.0)
    assert psi(ref, ref) == 0.0
    assert psi(ref, ref[::10]) == 0.0
    # half the bins empty: 5 * 0.1 * ln 2 + 5 * (0.1 - 1e-4) * ln(0.1 / 1e-4)
    assert psi(ref, ref[:500]) == pytest.approx(0.5 * math.log(2) + 5 * (0.1 - 1e-4) * math.log(1e3))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(samples, samples), min_size=1, max_size=4))
def test_batched_rows_equal_single_rows(pairs: list[tuple[list[float], list[float]]]) -> None:
    """The *_from_counts functions score stacked rows like one row at a time."""
    support = np.unique(np.concatenate([np.array(r + w) for r, w in pairs]))
    u = support.size

    def counts(x: list[float]) -> np.ndarray:
        return np.bincount(np.searchsorted(support, x), minlength=u)

    rc = np.stack([counts(r) for r, _ in pairs])
    wc = np.stack([counts(w) for _, w in pairs])
    for fn in (ks_from_counts, chi2_from_counts, js_from_counts, psi_from_counts):
        batch = fn(rc, wc)
        assert batch.shape == (len(pairs),)
        for i in range(len(pairs)):
            assert batch[i] == pytest.approx(float(fn(rc[i], wc[i])), rel=1e-12, abs=1e-15)
    batch = wasserstein_from_counts(support, rc, wc)
    for i, (r, w) in enumerate(pairs):
        assert batch[i] == pytest.approx(wasserstein_distance(r, w), rel=1e-9, abs=1e-9)


def test_ks_integer_counts_exact() -> None:
    """Integer counts give exactly k / (n * w): ties with thresholds compare as equal."""
    _, rc, wc = numeric_counts(np.arange(1000.0), np.arange(500.0) + 44.0)
    assert float(ks_from_counts(rc, wc)) == 456 / 1000  # at x = 543: 544 / 1000 against 1


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        ks_statistic([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        psi([1.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="empty"):
        chi2_statistic(["a"], [])


@pytest.mark.parametrize(("n", "m"), [(30, 20), (50, 50), (40, 7), (13, 200), (120, 80)])
def test_ks_exact_matches_scipy_exact(n: int, m: int) -> None:
    rng = np.random.default_rng(n * m)
    for shift in (0.0, 0.3, 0.8):
        x, y = rng.normal(size=n), rng.normal(size=m) + shift
        res = scipy_stats.ks_2samp(x, y, method="exact")
        t = round(res.statistic * n * m)
        # scipy's p-value is P(D >= d) = P(n m D > t - 1)
        assert ks_exact_sf(n, m, [t - 1])[0] == pytest.approx(res.pvalue, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize(("n", "m", "alpha"), [(1000, 500, 0.01), (200, 50, 0.001), (97, 31, 0.05)])
def test_ks_exact_threshold_is_tight(n: int, m: int, alpha: float) -> None:
    d = ks_exact_threshold(n, m, alpha)
    t = round(d * n * m)
    g = math.gcd(n, m)
    sf = ks_exact_sf(n, m, [t - g, t])
    assert sf[1] <= alpha < sf[0]
