"""Uncertainty scores (least confidence, margin, entropy) against an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.routing.uncertainty import entropy, least_confidence, margin

# Non-negative class scores, not necessarily summing to one, at least one of them positive.
_score = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False)
score_lists = st.lists(_score, min_size=2, max_size=6).filter(lambda v: sum(v) > 1e-9)
probability_vectors = st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=2, max_size=6).map(
    lambda v: [x / sum(v) for x in v])


def as_scores(values: list[float]) -> dict[str, float]:
    return {f"c{i}": v for i, v in enumerate(values)}


def reference(values: list[float]) -> tuple[float, float, float]:
    """Least confidence, margin and normalised entropy, computed with numpy from the definitions."""
    p = np.asarray(values, dtype=float)
    p = p / p.sum()
    k = p.size
    top = np.sort(p)[::-1]
    nz = p[p > 0]
    return (float((1 - top[0]) * k / (k - 1)), float(1 - (top[0] - top[1])),
            float(-(nz * np.log(nz)).sum() / np.log(k)))


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=300, deadline=None)
@given(probability_vectors)
def test_scores_match_numpy_on_probability_vectors(values):
    lc, mg, h = reference(values)
    scores = as_scores(values)
    assert close(least_confidence(scores), lc)
    assert close(margin(scores), mg)
    assert close(entropy(scores), h)


@settings(max_examples=300, deadline=None)
@given(score_lists)
def test_unnormalised_scores_are_normalised_first(values):
    lc, mg, h = reference(values)
    scores = as_scores(values)
    assert close(least_confidence(scores), lc)
    assert close(margin(scores), mg)
    assert close(entropy(scores), h)


@settings(max_examples=300, deadline=None)
@given(score_lists, st.floats(min_value=0.0, max_value=1.0))
def test_scores_lie_in_the_unit_interval(values, confidence):
    scores = as_scores(values)
    # Exact bounds for least confidence and margin; entropy / log K of a uniform K=5 vector is
    # 1 + 2.2e-16 in floating point (the code clamps only the low end), hence the 1e-12 slack.
    assert 0.0 <= least_confidence(scores, confidence) <= 1.0
    assert 0.0 <= margin(scores) <= 1.0
    assert 0.0 <= entropy(scores) <= 1.0 + 1e-12


def test_scaling_all_scores_changes_nothing():
    base = {"a": 0.5, "b": 0.3, "c": 0.2}
    scaled = {k: v * 37.0 for k, v in base.items()}
    for f in (least_confidence, margin, entropy):
        assert math.isclose(f(base), f(scaled), rel_tol=1e-12)


def test_worked_example_from_the_definitions():
    scores = {"yes": 0.7, "no": 0.2, "maybe": 0.1}
    assert math.isclose(least_confidence(scores), 0.3 * 3 / 2)
    assert math.isclose(margin(scores), 1 - 0.5)
    expected_h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert math.isclose(entropy(scores), expected_h)


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_uniform_scores_are_maximally_uncertain(k):
    scores = as_scores([1.0] * k)
    assert least_confidence(scores) == pytest.approx(1.0)
    assert margin(scores) == pytest.approx(1.0)
    assert entropy(scores) == pytest.approx(1.0)


def test_a_certain_prediction_scores_zero():
    scores = {"a": 1.0, "b": 0.0, "c": 0.0}
    assert least_confidence(scores) == 0.0
    assert margin(scores) == 0.0
    assert entropy(scores) == 0.0


def test_a_single_class_gives_none():
    assert least_confidence({"a": 0.9}) is None
    assert margin({"a": 0.9}) is None
    assert entropy({"a": 0.9}) is None


@pytest.mark.parametrize("scores", [None, {}, {"a": 0.0, "b": 0.0}, {"a": -1.0, "b": 0.0}])
def test_no_usable_scores_gives_none(scores):
    assert least_confidence(scores) is None
    assert margin(scores) is None
    assert entropy(scores) is None


def test_negative_scores_count_as_zero():
    assert least_confidence({"a": 3.0, "b": 1.0, "c": -5.0}) == pytest.approx(least_confidence(
        {"a": 3.0, "b": 1.0, "c": 0.0}))
    assert entropy({"a": 1.0, "b": -1.0}) == 0.0


@pytest.mark.parametrize("confidence, expected", [(1.0, 0.0), (0.9, 0.2), (0.8, 0.4), (0.5, 1.0),
                                                  (0.3, 1.0), (0.0, 1.0), (1.5, 0.0)])
def test_confidence_only_uses_the_two_class_scale(confidence, expected):
    assert least_confidence(None, confidence) == pytest.approx(expected)


@pytest.mark.parametrize("scores", [None, {}, {"a": 1.0}, {"a": 0.0, "b": 0.0}])
def test_unusable_scores_fall_back_to_the_confidence(scores):
    assert least_confidence(scores, 0.9) == pytest.approx(0.2)


def test_two_or_more_scores_win_over_the_confidence():
    assert least_confidence({"a": 0.6, "b": 0.4}, confidence=0.99) == pytest.approx(0.8)
