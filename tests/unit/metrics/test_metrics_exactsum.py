"""Tests of feedback_loop.metrics.exactsum against fractions.Fraction."""

from __future__ import annotations

from fractions import Fraction

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.metrics.exactsum import SCALE_BITS, decode, encode, fixed, fixed_mean, fsum_of

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(finite, min_size=1, max_size=30))
def test_sum_and_mean_are_exact_then_correctly_rounded(xs):
    total = sum(fixed(x) for x in xs)
    exact = sum(Fraction(x) for x in xs)
    assert Fraction(total, 1 << SCALE_BITS) == exact
    assert fixed_mean(total, len(xs)) == float(exact / len(xs))
    assert fsum_of(total) == float(exact)


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(finite, max_size=30), signs=st.lists(st.sampled_from([1, -1]), max_size=30))
def test_encode_round_trip_through_orjson(xs, signs):
    total = sum(s * fixed(x) for s, x in zip(signs, xs))
    text = encode(total)
    assert decode(orjson.loads(orjson.dumps(text))) == total


def test_bad_inputs():
    with pytest.raises(ValueError):
        fixed(float("nan"))
    with pytest.raises(OverflowError):
        fixed(float("inf"))
    with pytest.raises(ValueError):
        decode("1p-2000")
