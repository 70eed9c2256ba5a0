"""Tests of feedback_loop.metrics.sketch.

Guarantee checked: ``quantile(q)`` is within relative error ``alpha`` of the
lower-rank value ``np.quantile(values, q, method="lower")`` (element of index
``floor(q * (n - 1))`` of the sorted values), up to 1e-9 relative slack for
floating-point rounding; values below the smallest normal float (0.0 and
subnormals) are reported as 0.0.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.metrics import QuantileSketch

values = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
    st.floats(min_value=1e-300, max_value=1e300, allow_nan=False),
)
value_lists = st.lists(values, min_size=1, max_size=300)
alphas = st.sampled_from([0.001, 0.01, 0.05, 0.2])
quantiles = st.one_of(st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]), st.floats(0.0, 1.0))


def sketch_of(xs, alpha=0.01) -> QuantileSketch:
    sk = QuantileSketch(alpha)
    for x in xs:
        sk.add(x)
    return sk


def assert_within(est: float, exact: float, alpha: float) -> None:
    if exact < sys.float_info.min:  # zero and subnormals share the zero bucket
        assert est == 0.0
    else:
        assert abs(est - exact) <= alpha * exact * (1 + 1e-9), (est, exact)


@settings(max_examples=200, deadline=None)
@given(xs=value_lists, alpha=alphas, q=quantiles)
def test_relative_error_vs_lower_rank(xs, alpha, q):
    sk = sketch_of(xs, alpha)
    assert sk.count == len(xs)
    exact = float(np.quantile(np.array(xs), q, method="lower"))
    assert_within(sk.quantile(q), exact, alpha)


@settings(max_examples=100, deadline=None)
@given(xs=value_lists, alpha=alphas)
def test_every_rank(xs, alpha):
    sk = sketch_of(xs, alpha)
    ordered = sorted(xs)
    n = len(xs)
    for r in range(n):
        q = r / (n - 1) if n > 1 else 0.0
        assert_within(sk.quantile(q), ordered[math.floor(q * (n - 1))], alpha)


@settings(max_examples=150, deadline=None)
@given(xs=value_lists, data=st.data())
def test_remove_is_exact_inverse(xs, data):
    extra = data.draw(st.lists(values, max_size=50))
    sk = sketch_of(xs)
    for x in extra:
        sk.add(x)
    for x in data.draw(st.permutations(extra)):
        sk.remove(x)
    assert sk == sketch_of(xs)


@settings(max_examples=150, deadline=None)
@given(xs=value_lists, data=st.data())
def test_merge_of_partitions_equals_whole(xs, data):
    parts = data.draw(st.lists(st.integers(0, 3), min_size=len(xs), max_size=len(xs)))
    sketches = [sketch_of([x for x, p in zip(xs, parts) if p == k]) for k in range(4)]
    merged = QuantileSketch()
    for sk in sketches:
        assert merged.merge(sk) is merged
    assert merged == sketch_of(xs)


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(values, max_size=100), alpha=alphas)
def test_dict_round_trip_through_orjson(xs, alpha):
    sk = sketch_of(xs, alpha)
    d = sk.to_dict()
    assert orjson.loads(orjson.dumps(d)) == d
    assert QuantileSketch.from_dict(orjson.loads(orjson.dumps(d))) == sk


def test_zero_buckets_are_dropped():
    sk = sketch_of([1.0, 2.0, 0.0])
    sk.remove(2.0)
    sk.remove(0.0)
    assert sk.to_dict() == {"alpha": 0.01, "zero": 0, "buckets": {"0": 1}}
    assert QuantileSketch.from_dict(
        {"alpha": 0.01, "zero": 0, "buckets": {"0": 1, "5": 0}}
    ) == sk


def test_empty_is_none():
    sk = QuantileSketch()
    assert sk.quantile(0.5) is None
    sk.add(3.0)
    sk.remove(3.0)
    assert sk.quantile(0.5) is None
    assert sk == QuantileSketch()


def test_group_semantics_remove_before_add():
    sk = QuantileSketch()
    sk.remove(3.0)
    assert sk.count == -1
    with pytest.raises(ValueError):
        sk.quantile(0.5)
    sk.add(3.0)
    assert sk == QuantileSketch()


def test_negative_bucket_with_positive_count_raises():
    sk = sketch_of([1.0, 2.0])
    sk.remove(50.0)
    assert sk.count == 1
    with pytest.raises(ValueError):
        sk.quantile(0.5)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_values(bad):
    with pytest.raises(ValueError):
        QuantileSketch().add(bad)


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan])
def test_bad_quantile(q):
    with pytest.raises(ValueError):
        sketch_of([1.0]).quantile(q)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError):
        QuantileSketch(alpha)


def test_merge_requires_same_alpha():
    with pytest.raises(ValueError):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


def test_extreme_values_stay_finite():
    big = 1.7976931348623157e308
    sk = sketch_of([big, 5e-324, 2.2250738585072014e-308])
    assert sk.quantile(0.0) == 0.0  # subnormals go to the zero bucket
    assert_within(sk.quantile(0.5), 2.2250738585072014e-308, 0.01)
    top = sk.quantile(1.0)
    assert math.isfinite(top) and abs(top - big) <= 0.01 * big
