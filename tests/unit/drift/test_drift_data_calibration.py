"""Tests of feedback_loop.drift.calibration and bootstrap: quantile rule, sizes, and null fidelity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.drift.bootstrap import kind_of_tests, null_distribution
from feedback_loop.drift.calibration import (
    MIN_TAIL,
    bonferroni,
    calibrate,
    conservative_quantile,
    resamples_for,
)
from feedback_loop.drift.ks_exact import ks_exact_threshold
from feedback_loop.drift.statistics import chi2_from_counts, ks_from_counts, numeric_counts, psi


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300), st.floats(0.001, 0.5))
def test_conservative_quantile_is_the_order_statistic(values: list[float], alpha: float) -> None:
    b = len(values)
    k = math.ceil((b + 1) * (1 - alpha) - 1e-9)
    if k > b:
        with pytest.raises(ValueError):
            conservative_quantile(values, alpha)
        return
    q = conservative_quantile(values, alpha)
    assert q == sorted(values)[max(k, 1) - 1]
    # at most a fraction alpha of B + 1 exchangeable draws can exceed it
    assert sum(v > q for v in values) <= alpha * (b + 1)


@pytest.mark.parametrize("alpha", [0.5, 0.05, 0.01, 0.01 / 6, 1e-4])
def test_resamples_leave_min_tail_above(alpha: float) -> None:
    b = resamples_for(alpha, minimum=10)
    k = math.ceil((b + 1) * (1 - alpha) - 1e-9)
    assert k <= b and b - k + 1 >= min(MIN_TAIL, b)
    assert resamples_for(alpha, minimum=10**6) == 10**6


def test_bonferroni() -> None:
    assert bonferroni(0.01, 5) == 0.002
    with pytest.raises(ValueError):
        bonferroni(0.01, 0)


def test_kind_of_tests() -> None:
    assert kind_of_tests(["wasserstein"]) == "numeric"
    assert kind_of_tests(["js", "chi2"]) == "categorical"
    for bad in ([], ["ks", "chi2"], ["nope"]):
        with pytest.raises(ValueError):
            kind_of_tests(bad)


def test_calibrate_is_deterministic_by_seed() -> None:
    ref = np.round(np.random.default_rng(0).normal(size=300), 1)  # ties: KS is bootstrapped
    a = calibrate(ref, 100, ("ks", "psi", "wasserstein"), 0.01, rng=[1, 2])
    b = calibrate(ref, 100, ("ks", "psi", "wasserstein"), 0.01, rng=[1, 2])
    c = calibrate(ref, 100, ("ks", "psi", "wasserstein"), 0.01, rng=[1, 3])
    assert a == b != c


def test_exact_ks_for_tie_free_reference_and_memo() -> None:
    ref = np.random.default_rng(1).normal(size=400)
    memo: dict[tuple[int, int, float], float] = {}
    th = calibrate(ref, 200, ("ks",), 0.01, memo=memo)
    assert th["ks"] == ks_exact_threshold(400, 200, 0.01) == memo[(400, 200, 0.01)]
    boot = calibrate(ref, 200, ("ks",), 0.01, rng=0, exact_ks=False)["ks"]
    assert abs(boot - th["ks"]) < 0.015


def test_one_sample_bootstrap_is_too_narrow() -> None:
    """Leaving the reference's own noise out gives lower thresholds (the reason for two-sample)."""
    ref = np.random.default_rng(2).normal(size=500)
    tests = ("ks", "psi", "wasserstein")
    two = null_distribution(ref, 250, tests, 400, rng=0)
    one = null_distribution(ref, 250, tests, 400, rng=0, resample_reference=False)
    for t in tests:
        # variance ratio ~ (1/n + 1/w) / (1/w) = 1.5: D-like statistics ~ sqrt(1.5), PSI ~ 1.5
        assert np.mean(two[t]) > 1.1 * np.mean(one[t])


def test_two_sample_null_matches_fresh_samples() -> None:
    """The bootstrap null of PSI / chi2 has the mean of the true null (fresh reference and window)."""
    rng = np.random.default_rng(3)
    n, w = 600, 200
    ref = rng.exponential(size=n)
    boot = null_distribution(ref, w, ("psi",), 2000, rng=4)["psi"]
    fresh = [psi(rng.exponential(size=n), rng.exponential(size=w)) for _ in range(2000)]
    assert np.mean(boot) == pytest.approx(np.mean(fresh), rel=0.1)

    p = np.array([0.5, 0.3, 0.15, 0.05])
    counts = dict(zip("abcd", rng.multinomial(n, p).tolist()))
    boot = null_distribution(counts, w, ("chi2",), 2000, rng=5)["chi2"]
    fresh_chi2 = chi2_from_counts(rng.multinomial(n, p, size=2000), rng.multinomial(w, p, size=2000))
    assert np.mean(boot) == pytest.approx(np.mean(fresh_chi2), rel=0.1)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_ks_threshold_false_alarm_rate(kind: str) -> None:
    """Over many references, the rate of KS > threshold on unchanged data is <= alpha (+ slack)."""
    n, w, alpha, refs, windows = 200, 100, 0.05, 150, 20
    rng = np.random.default_rng(6)
    rates = []
    for s in range(refs):
        draw = (
            (lambda size: rng.normal(size=size)) if kind == "continuous" else (lambda size: rng.poisson(2.0, size=size))
        )
        ref = np.asarray(draw(n), dtype=float)
        th = calibrate(ref, w, ("ks",), alpha, rng=[7, s])["ks"]
        hits = 0
        for _ in range(windows):
            _, rc, wc = numeric_counts(ref, np.asarray(draw(w), dtype=float))
            hits += float(ks_from_counts(rc, wc)) > th
        rates.append(hits / windows)
    rate, se = float(np.mean(rates)), float(np.std(rates) / math.sqrt(refs))
    assert rate <= alpha + 2.5 * se


def test_ks_is_exact_while_no_value_holds_over_one_percent_of_the_reference():
    """Ties only lower D; with every value at most 1% of the reference the tie-free threshold is
    used (no resampling noise), with larger atoms the bootstrap's."""
    from feedback_loop.drift.calibration import EXACT_KS_MAX_TIE

    rng = np.random.default_rng(8)
    n, w, alpha = 1000, 500, 0.003
    sparse = np.round(rng.normal(size=n), 2)  # ties, none over 1%
    assert np.unique(sparse, return_counts=True)[1].max() <= EXACT_KS_MAX_TIE * n
    assert calibrate(sparse, w, ("ks",), alpha, rng=1)["ks"] == ks_exact_threshold(n, w, alpha)
    heavy = np.round(rng.normal(size=n), 1)  # the mode holds about 4%
    assert np.unique(heavy, return_counts=True)[1].max() > EXACT_KS_MAX_TIE * n
    boot = calibrate(heavy, w, ("ks",), alpha, rng=1)["ks"]
    assert boot < ks_exact_threshold(n, w, alpha)  # larger atoms lower D: the bootstrap sees it


def test_the_ordered_bootstrap_follows_the_exact_null_without_ties():
    """On a reference of unique values the bootstrap's draws are ordered by sort keys (a draw
    placed at random in its value's gap): P(D > t) must be the exact permutation law's, which
    ``ks_exact`` computes (draws of one value left tied would lower it by 0.007 at the 80% point:
    four standard errors here)."""
    from feedback_loop.drift.ks_exact import ks_exact_sf

    n, w, b = 400, 200, 60_000
    ref = np.random.default_rng(9).normal(size=n)
    boot = null_distribution(ref, w, ("ks",), b, rng=3)["ks"]
    ts = np.array([7200, 9200])  # n * w * D at about the 80% and 95% points
    for t, p in zip(ts, ks_exact_sf(n, w, ts)):
        seen = float(np.mean(boot * n * w > t + 0.5))
        assert abs(seen - p) <= 3 * math.sqrt(p * (1 - p) / b), (t, seen, p)
