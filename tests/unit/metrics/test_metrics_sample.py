"""Tests of feedback_loop.metrics.sample."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.metrics import Sample, make_sample

CLASSES = ["a", "b", "c", "", "x|y", "ünï"]

times = st.floats(min_value=0.0, max_value=2e9, allow_nan=False)
delays = st.floats(min_value=-10.0, max_value=1e7, allow_nan=False)


@st.composite
def score_maps(draw: st.DrawFn) -> dict[str, float]:
    classes = draw(st.lists(st.sampled_from(CLASSES), min_size=1, unique=True))
    probs = draw(st.lists(st.floats(0.0, 1.0), min_size=len(classes), max_size=len(classes)))
    return dict(zip(classes, probs))


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    pred=st.sampled_from(CLASSES),
    label=st.sampled_from(CLASSES),
    scores=score_maps(),
    at=times,
    delay=delays,
)
def test_classification_fields_match_numpy(pred, label, scores, at, delay):
    s = make_sample("p", at, pred, label, None, scores, delay)
    classes = sorted(set(scores) | {label})
    p = np.array([scores.get(k, 0.0) for k in classes])
    onehot = np.array([k == label for k in classes], dtype=float)
    assert s.correct is (pred == label)
    assert s.p_true == scores.get(label, 0.0)
    assert isclose(s.brier, float(np.sum((p - onehot) ** 2)))
    assert s.delay == max(delay, 0.0)
    assert s.predicted_at == at
    assert s.is_classification


def test_explicit_correct_is_kept():
    # A reviewer verdict wins over the string comparison.
    assert make_sample("p", 0.0, "a", "b", True, None, 0.0).correct is True
    assert make_sample("p", 0.0, "a", "a", False, None, 0.0).correct is False


def test_unknown_label_has_no_probabilistic_fields():
    s = make_sample("p", 0.0, "a", None, None, {"a": 1.0}, 1.0)
    assert (s.label, s.correct, s.p_true, s.brier) == (None, False, None, None)


@pytest.mark.parametrize("scores", [None, {}])
def test_no_scores(scores):
    s = make_sample("p", 0.0, "a", "a", None, scores, 1.0)
    assert (s.correct, s.p_true, s.brier) == (True, None, None)


def test_regression():
    s = make_sample("p", 5, 1, 2, True, {"a": 1.0}, 3)
    assert s == Sample("p", 5.0, 1.0, 2.0, None, None, None, 3.0)
    assert not s.is_classification
    assert isinstance(s.prediction, float) and isinstance(s.label, float)
    assert make_sample("p", 5, np.float32(1.5), None, None, None, 0).label is None


@pytest.mark.parametrize(
    ("prediction", "label"), [("a", 1.0), (1.0, "a"), (True, 1.0), (1.0, True)]
)
def test_type_mismatch_raises(prediction, label):
    with pytest.raises(TypeError):
        make_sample("p", 0.0, prediction, label, None, None, 0.0)


@pytest.mark.parametrize(
    ("at", "prediction", "label", "scores", "delay"),
    [
        (math.nan, "a", "a", None, 0.0),
        (math.inf, "a", "a", None, 0.0),
        (0.0, "a", "a", None, math.nan),
        (0.0, "a", "a", None, math.inf),
        (0.0, "a", "a", {"a": math.nan}, 0.0),
        (0.0, "a", "a", {"a": 0.5, "b": math.inf}, 0.0),
        (0.0, math.nan, 1.0, None, 0.0),
        (0.0, 1.0, -math.inf, None, 0.0),
    ],
)
def test_non_finite_raises(at, prediction, label, scores, delay):
    with pytest.raises(ValueError):
        make_sample("p", at, prediction, label, None, scores, delay)


@settings(max_examples=200, deadline=None)
@given(
    pid=st.text(),
    pred=st.one_of(st.sampled_from(CLASSES), st.floats(allow_nan=False, allow_infinity=False)),
    label_pick=st.booleans(),
    scores=st.one_of(st.none(), score_maps()),
    at=times,
    delay=delays,
)
def test_list_round_trip_through_orjson(pid, pred, label_pick, scores, at, delay):
    label = (pred if label_pick else None) if isinstance(pred, str) else (2.5 if label_pick else None)
    s = make_sample(pid, at, pred, label, None, scores, delay)
    back = Sample.from_list(orjson.loads(orjson.dumps(s.to_list())))
    assert back == s
    assert [type(v) for v in back.to_list()] == [type(v) for v in s.to_list()]


def test_from_list_checks_length():
    with pytest.raises(ValueError):
        Sample.from_list(["p", 0.0, "a"])


def test_sample_is_frozen_and_slotted():
    s = make_sample("p", 0.0, "a", "a", None, None, 0.0)
    with pytest.raises(AttributeError):
        s.label = "b"  # type: ignore[misc]
    assert not hasattr(s, "__dict__")
    assert s.key == (0.0, "p")
