"""Tests of feedback_loop.metrics.accumulator against scikit-learn and numpy."""

from __future__ import annotations

import math
import sys

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from feedback_loop.metrics import EPS, METRIC_FIELDS, Accumulator, Sample, make_sample

CLASSES = sorted(["a", "b", "c", "", "x|y", 'q"{'])
UNKNOWN = "\x00unknown"  # stand-in for a None label in sklearn's accuracy


def isclose(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


Case = tuple[Sample, "np.ndarray | None"]  # a sample and the score row it was made from


@st.composite
def cls_cases(draw: st.DrawFn) -> Case:
    """A classification sample; scores, when present, are a normalised row over CLASSES."""
    pred = draw(st.sampled_from(CLASSES))
    label = draw(st.one_of(st.none(), st.sampled_from(CLASSES), st.just(pred)))
    row = None
    if draw(st.integers(0, 4)):
        w = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=len(CLASSES), max_size=len(CLASSES))))
        row = w / w.sum()
    scores = None if row is None else dict(zip(CLASSES, row.tolist()))
    at = draw(st.floats(0.0, 1e9))
    delay = draw(st.floats(0.0, 1e6))
    return make_sample("p", at, pred, label, None, scores, delay), row


@st.composite
def reg_cases(draw: st.DrawFn) -> Case:
    pred = draw(st.floats(-1e6, 1e6))
    label = draw(st.one_of(st.none(), st.floats(-1e6, 1e6)))
    return make_sample("r", 0.0, pred, label, None, None, draw(st.floats(0.0, 1e6))), None


any_cases = st.one_of(cls_cases(), reg_cases())
any_samples = any_cases.map(lambda case: case[0])


def reference(cases: list[Case]) -> tuple[dict, float | None, float | None]:
    """Metrics via sklearn/numpy from the raw inputs; also the exact lower-rank delay p50/p95."""
    samples = [s for s, _ in cases]
    cls = [s for s in samples if isinstance(s.prediction, str)]
    known = [s for s in cls if s.label is not None]
    scored = [(s, row) for s, row in cases if row is not None and s.label is not None]
    reg = [s for s in samples if not isinstance(s.prediction, str) and s.label is not None]
    out: dict = dict.fromkeys(METRIC_FIELDS)
    out["count"] = len(samples)
    out["correct"] = sum(1 for s in cls if s.prediction == s.label)
    if cls:
        out["accuracy"] = accuracy_score(
            [UNKNOWN if s.label is None else s.label for s in cls], [s.prediction for s in cls]
        )
    if known:
        p, r, f, _ = precision_recall_fscore_support(
            [s.label for s in known], [s.prediction for s in known], average="macro", zero_division=0
        )
        out["precision_macro"], out["recall_macro"], out["f1_macro"] = p, r, f
    if scored:
        y = [s.label for s, _ in scored]
        proba = np.array([row for _, row in scored])
        onehot = np.array([[k == label for k in CLASSES] for label in y], dtype=float)
        out["log_loss"] = log_loss(y, proba, labels=CLASSES)
        out["brier"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    if reg:
        y, yhat = [s.label for s in reg], [s.prediction for s in reg]
        out["mae"] = mean_absolute_error(y, yhat)
        out["rmse"] = math.sqrt(mean_squared_error(y, yhat))
    if not samples:
        return out, None, None
    delays = np.array([s.delay for s in samples])
    p50, p95 = (float(np.quantile(delays, q, method="lower")) for q in (0.5, 0.95))
    return out, p50, p95


def check_against_reference(cases: list[Case]) -> Accumulator:
    acc = Accumulator.of(s for s, _ in cases)
    want, p50, p95 = reference(cases)
    got = acc.result()
    for k, exact in (("label_delay_p50", p50), ("label_delay_p95", p95)):
        est = got.pop(k)
        want.pop(k)
        if exact is None:
            assert est is None
        elif exact < sys.float_info.min:  # the sketch reports subnormals as 0.0
            assert est == 0.0
        else:
            assert abs(est - exact) <= acc.alpha * exact * (1 + 1e-9), (k, est, exact)
    for k in want:
        assert isclose(got[k], want[k]), (k, got[k], want[k])
    return acc


@settings(max_examples=200, deadline=None)
@given(cases=st.lists(cls_cases(), max_size=60))
def test_classification_matches_sklearn(cases):
    check_against_reference(cases)


@settings(max_examples=100, deadline=None)
@given(cases=st.lists(reg_cases(), max_size=60))
def test_regression_matches_sklearn(cases):
    r = check_against_reference(cases).result()
    assert r["accuracy"] is None and r["f1_macro"] is None and r["log_loss"] is None


@settings(max_examples=100, deadline=None)
@given(cases=st.lists(any_cases, max_size=60))
def test_mixed_stream_matches_reference(cases):
    check_against_reference(cases)


def test_brier_and_log_loss_from_scores():
    rows = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5], [0.0, 1.0, 0.0]])
    labels = ["a", "c", "b", "b"]
    classes = ["a", "b", "c"]
    samples = [
        make_sample(f"p{i}", float(i), "a", y, None, dict(zip(classes, row)), 0.0)
        for i, (row, y) in enumerate(zip(rows, labels))
    ]
    r = Accumulator.of(samples).result()
    onehot = np.array([[k == y for k in classes] for y in labels], dtype=float)
    assert isclose(r["brier"], float(np.mean(np.sum((rows - onehot) ** 2, axis=1))))
    assert isclose(r["log_loss"], log_loss(labels, rows, labels=classes))


def test_log_loss_clips_at_eps():
    s0 = make_sample("p0", 0.0, "a", "b", None, {"a": 1.0}, 0.0)  # label not scored: p = 0
    s1 = make_sample("p1", 0.0, "a", "a", None, {"a": 1.0}, 0.0)  # p = 1
    r = Accumulator.of([s0, s1]).result()
    want = (-math.log(EPS) - math.log(1 - EPS)) / 2
    assert isclose(r["log_loss"], want)
    assert EPS == 1e-15


def test_unknown_labels_count_as_wrong_only():
    samples = [
        make_sample("p0", 0.0, "a", "a", None, {"a": 0.9, "b": 0.1}, 1.0),
        make_sample("p1", 0.0, "a", None, None, {"a": 0.9, "b": 0.1}, 2.0),
    ]
    r = Accumulator.of(samples).result()
    assert (r["count"], r["correct"], r["accuracy"]) == (2, 1, 0.5)
    assert r["precision_macro"] == r["recall_macro"] == r["f1_macro"] == 1.0
    assert isclose(r["log_loss"], -math.log(0.9))
    assert isclose(r["brier"], 0.1**2 + 0.1**2)


def test_empty_result():
    r = Accumulator().result()
    assert r == {**dict.fromkeys(METRIC_FIELDS), "count": 0, "correct": 0}


@settings(max_examples=150, deadline=None)
@given(base=st.lists(any_samples, max_size=40), extra=st.lists(any_samples, max_size=20), data=st.data())
def test_add_then_remove_restores(base, extra, data):
    acc = Accumulator.of(base)
    before = acc.result()
    for s in extra:
        acc.add(s)
    for s in data.draw(st.permutations(extra)):
        acc.remove(s)
    # Sums are exact fixed-point integers: the state is restored bit for bit.
    assert acc == Accumulator.of(base)
    assert acc.result() == before


def test_remove_prunes_confusion():
    s = make_sample("p", 0.0, "a", "b", None, None, 0.0)
    acc = Accumulator()
    acc.add(s)
    acc.remove(s)
    assert acc.confusion == {}
    assert acc == Accumulator()


def test_remove_before_add_cancels():
    s = make_sample("p", 0.0, "a", "b", None, {"a": 0.5, "b": 0.5}, 3.0)
    delta = Accumulator()
    delta.remove(s)
    assert delta.count == -1 and delta.confusion == {"a": {"b": -1}}
    acc = Accumulator.of([s]).merge(delta)
    assert acc.confusion == {} and acc.result() == Accumulator().result()


@settings(max_examples=150, deadline=None)
@given(samples=st.lists(any_samples, max_size=60), data=st.data())
def test_merge_of_partitions_equals_whole(samples, data):
    parts = data.draw(st.lists(st.integers(0, 3), min_size=len(samples), max_size=len(samples)))
    merged = Accumulator()
    for k in data.draw(st.permutations(range(4))):
        part = Accumulator.of(s for s, p in zip(samples, parts) if p == k)
        assert merged.merge(part) is merged
    whole = Accumulator.of(samples)
    assert merged == whole  # exact, whatever the partitioning and merge order
    assert merged.result() == whole.result()


@settings(max_examples=100, deadline=None)
@given(samples=st.lists(any_samples, max_size=40))
def test_dict_round_trip_through_orjson(samples):
    acc = Accumulator.of(samples)
    d = acc.to_dict()
    assert orjson.loads(orjson.dumps(d)) == d
    back = Accumulator.from_dict(orjson.loads(orjson.dumps(d)))
    assert back == acc
    assert back.result() == acc.result()


def test_merge_requires_same_alpha():
    with pytest.raises(ValueError):
        Accumulator(0.01).merge(Accumulator(0.05))
