"""Tests of feedback_loop.drift.performance: CBPE calibrated online from delayed outcomes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.drift.performance import PerformanceEstimator, WindowEstimate
from feedback_loop.errors import ConfigurationError


def feed_outcomes(est: PerformanceEstimator, conf: np.ndarray, correct: np.ndarray) -> None:
    for c, ok in zip(conf.tolist(), correct.tolist(), strict=True):
        est.observe_outcome(c, ok)


def feed_window(est: PerformanceEstimator, conf: np.ndarray, prefix: str = "p") -> None:
    for i, c in enumerate(conf.tolist()):
        est.observe_prediction(f"{prefix}{i}", c)


def brute_force_estimate(est: PerformanceEstimator, outcomes: list[tuple[float, bool]], window: list[float]) -> float:
    """The estimate from its definition: mean over the window of the map learned on the tail."""
    tail = outcomes[-est.calibration_size :]
    s = est.prior_strength

    def p(c: float) -> float:
        b = min(int(c * est.bins), est.bins - 1)
        in_bin = [ok for x, ok in tail if min(int(x * est.bins), est.bins - 1) == b]
        den = len(in_bin) + s
        return (sum(in_bin) + s * c) / den if den > 0 else c

    return sum(p(c) for c in window) / len(window)


# -- accuracy of the estimate -------------------------------------------------------------


def test_fallback_before_any_outcome_is_mean_confidence() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 500)
    est = PerformanceEstimator(window_size=500)
    assert est.estimate() is None
    feed_window(est, conf)
    assert est.calibration_count == 0 and est.last_known_accuracy is None
    assert est.estimate() == pytest.approx(conf.mean(), rel=1e-12)
    w = est.close_window()
    assert w is not None and w.calibration_outcomes == 0
    assert w.estimated_accuracy == pytest.approx(w.mean_confidence, rel=1e-12)


def test_calibrated_model_estimate_is_close_to_truth() -> None:
    rng = np.random.default_rng(1)
    est = PerformanceEstimator()  # defaults
    conf = rng.uniform(0.5, 1.0, 2000)
    feed_outcomes(est, conf, rng.random(2000) < conf)
    window = rng.uniform(0.5, 1.0, 1000)
    truth = rng.random(1000) < window
    feed_window(est, window)
    estimate = est.estimate()
    assert estimate is not None
    # Margins hold for 200 seeds out of 200 (about 3-4 standard deviations of the noise).
    assert abs(estimate - window.mean()) < 0.035  # the expected accuracy
    assert abs(estimate - truth.mean()) < 0.06  # the realized one (1.4 points of sampling noise)


def test_online_calibration_corrects_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    est = PerformanceEstimator()
    window = rng.uniform(0.5, 1.0, 1000)
    feed_window(est, window)
    expected = float(np.mean(window**2))  # true P(correct | c) = c ** 2
    naive = est.estimate()
    assert naive is not None and naive - expected > 0.10  # uncalibrated: far too optimistic
    conf = rng.uniform(0.5, 1.0, 3000)
    feed_outcomes(est, conf, rng.random(3000) < conf**2)
    estimate = est.estimate()
    assert estimate is not None and abs(estimate - expected) < 0.045
    centers = np.arange(0.525, 1.0, 0.05)  # the learned map is close to c ** 2 bin by bin
    assert np.mean([abs(est.calibrated(c) - c * c) for c in centers]) < 0.06


def test_sliding_calibration_follows_drift() -> None:
    rng = np.random.default_rng(3)
    est = PerformanceEstimator(calibration_size=2000)
    conf = rng.uniform(0.5, 1.0, 2000)
    feed_outcomes(est, conf, rng.random(2000) < conf)  # calibrated at first
    window = rng.uniform(0.5, 1.0, 1000)
    feed_window(est, window)
    before = est.estimate()
    assert before is not None and abs(before - window.mean()) < 0.035
    conf = rng.uniform(0.5, 1.0, 2000)
    feed_outcomes(est, conf, rng.random(2000) < conf - 0.25)  # concept drift: 25 points worse
    after = est.estimate()
    assert est.calibration_count == 2000
    assert after is not None and abs(after - (window.mean() - 0.25)) < 0.04


def test_estimate_uses_the_calibration_at_the_time_of_the_call() -> None:
    est = PerformanceEstimator(window_size=4, calibration_size=10, bins=1, prior_strength=0.0)
    for i in range(4):
        est.observe_prediction(f"p{i}", 0.9)
    assert est.estimate() == pytest.approx(0.9)
    for _ in range(10):
        est.observe_outcome(0.9, False)
    assert est.estimate() == 0.0
    for _ in range(5):
        est.observe_outcome(0.9, True)
    assert est.estimate() == 0.5
    assert est.close_window().estimated_accuracy == 0.5  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(
    calibration_size=st.integers(1, 12),
    bins=st.integers(1, 6),
    prior_strength=st.sampled_from([0.0, 0.5, 2.0, 10.0]),
    ops=st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.2, 0.5, 0.51, 0.75, 0.9, 0.99, 1.0]), st.booleans()),
        max_size=60,
    ),
)
def test_incremental_state_matches_brute_force(
    calibration_size: int, bins: int, prior_strength: float, ops: list[tuple[bool, float, bool]]
) -> None:
    est = PerformanceEstimator(window_size=5, calibration_size=calibration_size, bins=bins,
                               prior_strength=prior_strength)
    outcomes: list[tuple[float, bool]] = []
    window: list[float] = []
    for i, (is_prediction, c, ok) in enumerate(ops):
        if is_prediction:
            assert est.observe_prediction(f"p{i}", c) == est.window_index
            window.append(c)
        else:
            est.observe_outcome(c, ok)
            outcomes.append((c, ok))
    tail = outcomes[-calibration_size:]
    assert est.calibration_count == len(tail)
    if tail:
        assert est.last_known_accuracy == pytest.approx(sum(ok for _, ok in tail) / len(tail))
    if window:
        assert est.estimate() == pytest.approx(brute_force_estimate(est, outcomes, window), abs=1e-12)
        assert est.is_full == (len(window) >= 5)
    else:
        assert est.estimate() is None


# -- hybrid estimate: realized where labeled, CBPE elsewhere ------------------------------


def test_hybrid_is_the_realized_accuracy_when_every_label_arrived_before_close() -> None:
    rng = np.random.default_rng(5)
    est = PerformanceEstimator(window_size=400, calibration_size=300)
    feed_outcomes(est, rng.uniform(0.5, 1.0, 500), rng.random(500) < 0.3)  # a map far from the truth
    conf = rng.uniform(0.5, 1.0, 400)
    correct = rng.random(400) < conf
    feed_window(est, conf)
    for i in rng.permutation(400).tolist():
        est.observe_outcome(float(conf[i]), bool(correct[i]), prediction_id=f"p{i}")
    assert est.window_labeled == 400
    assert est.estimate() == correct.sum() / 400  # exactly: no estimated part left
    cbpe = est.cbpe_estimate()
    w = est.close_window()
    assert w is not None and (w.labeled_at_close, w.count) == (400, 400)
    assert w.estimated_accuracy == correct.sum() / 400 and w.cbpe_accuracy == cbpe
    assert w.reconcile(int(correct.sum()), 400).error == 0.0
    assert est.window_labeled == 0  # the next window starts unlabeled


def test_hybrid_is_cbpe_when_no_label_of_the_window_arrived() -> None:
    rng = np.random.default_rng(6)
    est = PerformanceEstimator(window_size=300, calibration_size=400, bins=10)
    first = rng.uniform(0.5, 1.0, 300)
    feed_window(est, first, prefix="old")
    assert est.close_window() is not None
    window = rng.uniform(0.5, 1.0, 300)
    feed_window(est, window)
    outcomes: list[tuple[float, bool]] = []
    for i, c in enumerate(first.tolist()):  # labels of the closed window, by id: calibration only
        outcomes.append((c, bool(rng.random() < c - 0.2)))
        est.observe_outcome(*outcomes[-1], prediction_id=f"old{i}")
    for c in rng.uniform(0.5, 1.0, 50).tolist():  # without id, or with an unknown one
        outcomes.append((c, bool(rng.random() < c)))
        est.observe_outcome(*outcomes[-1], prediction_id=None if c < 0.75 else "nobody")
    assert est.window_labeled == 0 and est.calibration_count == 350
    assert est.estimate() == est.cbpe_estimate()
    assert est.estimate() == pytest.approx(brute_force_estimate(est, outcomes, window.tolist()), abs=1e-12)
    w = est.close_window()
    assert w is not None and w.labeled_at_close == 0
    assert w.estimated_accuracy == w.cbpe_accuracy


def test_hybrid_mixes_realized_and_calibrated_parts() -> None:
    est = PerformanceEstimator(window_size=4, calibration_size=10, bins=1, prior_strength=0.0)
    for i, c in enumerate((0.9, 0.8, 0.7, 0.6)):
        est.observe_prediction(f"p{i}", c)
    for _ in range(3):
        est.observe_outcome(0.9, True)
    est.observe_outcome(0.9, False)  # the map: 3/4
    est.observe_outcome(0.9, False, prediction_id="p0")  # now 3/5, and p0 realized wrong
    assert (est.window_labeled, est.calibrated(0.5)) == (1, 0.6)
    assert est.estimate() == pytest.approx((0 + 3 * 0.6) / 4)
    assert est.cbpe_estimate() == pytest.approx(0.6)
    est.observe_outcome(0.8, True, prediction_id="p1")  # 4/6
    assert est.estimate() == pytest.approx((0 + 1 + 2 * 4 / 6) / 4)


def test_a_revision_replaces_the_outcome_and_counts_once() -> None:
    est = PerformanceEstimator(window_size=3, calibration_size=5, bins=2, prior_strength=0.0)
    ref = PerformanceEstimator(window_size=3, calibration_size=5, bins=2, prior_strength=0.0)
    for e in (est, ref):
        for i, c in enumerate((0.9, 0.8, 0.7)):
            e.observe_prediction(f"p{i}", c)
        e.observe_outcome(0.9, True)
    est.observe_outcome(0.9, True, prediction_id="p0")
    for revised in (False, False, True, False):  # revisions, repeated ones too
        est.observe_outcome(0.9, revised, prediction_id="p0")
    ref.observe_outcome(0.9, False, prediction_id="p0")  # as if only the last one was seen
    assert est.to_dict() == ref.to_dict()
    assert (est.window_labeled, est.calibration_count, est.last_known_accuracy) == (1, 2, 0.5)
    assert est.estimate() == ref.estimate() == pytest.approx((0 + 0.5 + 0.5) / 3)
    # A revision whose first outcome has left the calibration window: only the tally changes.
    for _ in range(5):
        est.observe_outcome(0.9, True)
    assert est.last_known_accuracy == 1.0
    est.observe_outcome(0.9, True, prediction_id="p0")
    assert (est.window_labeled, est.last_known_accuracy, est.calibration_count) == (1, 1.0, 5)
    assert est.estimate() == pytest.approx((1 + 1 + 1) / 3)
    w = est.close_window()
    assert w is not None and w.labeled_at_close == 1
    # After the close the window's ids are forgotten: a later outcome only feeds the calibration.
    est.observe_outcome(0.9, False, prediction_id="p0")
    assert est.window_labeled == 0 and est.last_known_accuracy == 0.8


def test_repeated_prediction_id_counts_twice_and_names_the_latest() -> None:
    est = PerformanceEstimator(window_size=3, bins=1, prior_strength=0.0)
    est.observe_prediction("a", 0.8)
    est.observe_prediction("a", 0.6)
    est.observe_outcome(0.6, True, prediction_id="a")  # labels the second "a"; the map is now 1/1
    assert (est.window_count, est.window_labeled, est.estimate()) == (2, 1, 1.0)
    est.observe_outcome(0.6, False, prediction_id="a")  # a revision, not the first "a"
    assert (est.window_labeled, est.calibration_count, est.estimate()) == (1, 1, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    calibration_size=st.integers(1, 8),
    bins=st.integers(1, 4),
    prior_strength=st.sampled_from([0.0, 0.5, 2.0]),
    split=st.integers(0, 80),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["predict", "predict", "label", "label", "other", "close"]),
            st.sampled_from([0.0, 0.2, 0.5, 0.51, 0.75, 0.9, 1.0]),
            st.booleans(),
            st.integers(0, 50),
        ),
        max_size=80,
    ),
)
def test_hybrid_matches_its_definition_and_round_trips(
    calibration_size: int, bins: int, prior_strength: float, split: int,
    ops: list[tuple[str, float, bool, int]],
) -> None:
    """Against a brute force kept by id, with revisions and closes; a clone taken midway agrees."""
    est = PerformanceEstimator(window_size=4, calibration_size=calibration_size, bins=bins,
                               prior_strength=prior_strength)
    clone: PerformanceEstimator | None = None
    history: list[list[Any]] = []  # every calibration outcome, [confidence, correct]; revised in place
    window: list[tuple[str, float]] = []
    labeled: dict[str, int] = {}  # id of the open window -> its outcome in history
    closed_ids: list[str] = []

    def p(c: float) -> float:
        b = min(int(c * bins), bins - 1)
        in_bin = [ok for x, ok in history[-calibration_size:] if min(int(x * bins), bins - 1) == b]
        den = len(in_bin) + prior_strength
        return (sum(in_bin) + prior_strength * c) / den if den > 0 else c

    def expected() -> tuple[float, float] | None:
        if not window:
            return None
        hybrid = sum(history[labeled[pid]][1] if pid in labeled else p(c) for pid, c in window)
        return hybrid / len(window), sum(p(c) for _, c in window) / len(window)

    for i, (kind, c, ok, pick) in enumerate(ops):
        if i == split:
            clone = PerformanceEstimator.from_dict(orjson.loads(orjson.dumps(est.to_dict())))
        ests = [e for e in (est, clone) if e is not None]
        if kind == "predict":
            window.append((f"p{i}", c))
            for e in ests:
                e.observe_prediction(f"p{i}", c)
        elif kind == "close":
            want = expected()
            got = [e.close_window() for e in ests]
            assert all(w == got[0] for w in got)
            if want is None:
                assert got[0] is None
            else:
                w = got[0]
                assert w is not None and w.cbpe_accuracy is not None
                assert (w.count, w.labeled_at_close) == (len(window), len(labeled))
                assert w.estimated_accuracy == pytest.approx(want[0], abs=1e-12)
                assert w.cbpe_accuracy == pytest.approx(want[1], abs=1e-12)
                closed_ids += [pid for pid, _ in window]
            window, labeled = [], {}
        else:
            if kind == "label" and window:
                pid: str | None = window[pick % len(window)][0]
            else:
                pid = closed_ids[pick % len(closed_ids)] if closed_ids and pick % 3 else None
            if pid is not None and pid in labeled:
                history[labeled[pid]] = [c, ok]
            else:
                if pid is not None and any(pid == q for q, _ in window):
                    labeled[pid] = len(history)
                history.append([c, ok])
            for e in ests:
                e.observe_outcome(c, ok, prediction_id=pid)
        want = expected()
        for e in ests:
            assert e.window_labeled == len(labeled)
            assert e.calibration_count == len(history[-calibration_size:])
            if want is None:
                assert e.estimate() is None and e.cbpe_estimate() is None
            else:
                assert e.estimate() == pytest.approx(want[0], abs=1e-12)
                assert e.cbpe_estimate() == pytest.approx(want[1], abs=1e-12)
        if clone is not None:
            assert clone.to_dict() == est.to_dict()
            assert clone.estimate() == est.estimate() and clone.cbpe_estimate() == est.cbpe_estimate()


# -- windows and reconciliation -----------------------------------------------------------


def test_close_window_sequence_and_reconcile() -> None:
    est = PerformanceEstimator(window_size=3)
    assert est.close_window() is None and est.window_index == 0
    indices = [est.observe_prediction(pid, 0.8) for pid in ("a", "b", "c")]
    assert indices == [0, 0, 0] and est.is_full and est.window_count == 3
    w = est.close_window()
    assert w is not None
    assert (w.index, w.count, w.first_prediction_id, w.last_prediction_id) == (0, 3, "a", "c")
    assert w.mean_confidence == pytest.approx(0.8) and w.estimated_accuracy == pytest.approx(0.8)
    assert est.observe_prediction("d", 0.6) == 1 and est.window_count == 1 and not est.is_full
    assert w.realized_accuracy is None and w.error is None and w.label_coverage == 0.0
    r = w.reconcile(correct=1, labeled=2)
    assert (r.correct, r.labeled, r.label_coverage) == (1, 2, pytest.approx(2 / 3))
    assert r.realized_accuracy == 0.5 and r.error == pytest.approx(0.3)
    assert w.labeled == 0  # frozen: reconcile returns a copy
    d = orjson.loads(orjson.dumps(r.to_dict()))
    assert d["realized_accuracy"] == 0.5 and WindowEstimate.from_dict(d) == r
    for correct, labeled in [(3, 2), (-1, 0), (0, 4)]:
        with pytest.raises(ValueError):
            w.reconcile(correct=correct, labeled=labeled)


def test_window_past_window_size_keeps_growing_until_closed() -> None:
    est = PerformanceEstimator(window_size=2)
    for i in range(5):
        assert est.observe_prediction(f"p{i}", 0.7) == 0
    w = est.close_window()
    assert w is not None and w.count == 5


# -- checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("calibration_size", [500, 100])  # 100: labels of the window leave the map
def test_to_dict_from_dict_round_trip_continues_identically(calibration_size: int) -> None:
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.3, 1.0, 3000)
    correct = rng.random(3000) < conf**1.5
    a = PerformanceEstimator(window_size=300, calibration_size=calibration_size, bins=8, prior_strength=3.5)
    b: PerformanceEstimator | None = None
    closed_a: list[WindowEstimate] = []
    closed_b: list[WindowEstimate] = []
    for i in range(3000):
        if i == 1434:  # 234 predictions into window 4, 186 of their labels landed, some revised
            b = PerformanceEstimator.from_dict(orjson.loads(orjson.dumps(a.to_dict())))
            assert 0 < b.window_labeled < b.window_count
            assert b.to_dict() == a.to_dict() and b.estimate() == a.estimate()
        for est, closed in ((a, closed_a), (b, closed_b)):
            if est is None:
                continue
            est.observe_prediction(f"p{i}", float(conf[i]))
            if i >= 48:  # labels land 48 predictions late, by id
                est.observe_outcome(float(conf[i - 48]), bool(correct[i - 48]), prediction_id=f"p{i - 48}")
            if i % 7 == 0 and i >= 100:  # and an outcome 100 predictions back is revised
                est.observe_outcome(float(conf[i - 100]), not correct[i - 100], prediction_id=f"p{i - 100}")
            if est.is_full:
                closed.append(est.close_window())  # type: ignore[arg-type]
        assert b is None or (a.estimate() == b.estimate() and a.cbpe_estimate() == b.cbpe_estimate())
    assert b is not None
    assert closed_b == [w for w in closed_a if w.index >= closed_b[0].index]
    assert len(closed_b) >= 5 and all(w.labeled_at_close == 300 - 48 for w in closed_b)
    assert all(w.estimated_accuracy != w.cbpe_accuracy for w in closed_b)
    assert b.to_dict() == a.to_dict() and b.estimate() == a.estimate()


def test_from_dict_loads_a_version_1_state_with_its_window_unlabeled() -> None:
    est = PerformanceEstimator(window_size=5, bins=4)
    est.observe_outcome(0.9, False)
    for i, c in enumerate((0.9, 0.6, 0.8)):
        est.observe_prediction(f"p{i}", c)
    state = est.to_dict()
    v1 = {**state, "version": 1, "window": {k: state["window"][k] for k in (
        "index", "count", "bin_counts", "bin_confidence_sums", "first_prediction_id", "last_prediction_id")}}
    old = PerformanceEstimator.from_dict(v1)
    assert old.estimate() == est.estimate() == old.cbpe_estimate()
    old.observe_outcome(0.9, True, prediction_id="p0")  # ids unknown: calibration only
    est.observe_outcome(0.9, True)
    assert old.window_labeled == 0 and old.estimate() == est.estimate()
    old.observe_prediction("p3", 0.7)
    old.observe_outcome(0.7, True, prediction_id="p3")  # new predictions are tracked by id
    assert old.window_labeled == 1 and old.window_count == 4
    assert old.to_dict()["version"] == 2


def test_window_estimate_from_an_older_dict_has_no_cbpe_part() -> None:
    w = WindowEstimate(0, 10, 0.8, 0.9, 5, "a", "b", labeled_at_close=4, cbpe_accuracy=0.85)
    d = orjson.loads(orjson.dumps(w.to_dict()))
    assert d["labeled_at_close"] == 4 and WindowEstimate.from_dict(d) == w
    for key in ("labeled_at_close", "cbpe_accuracy"):
        del d[key]
    old = WindowEstimate.from_dict(d)
    assert (old.labeled_at_close, old.cbpe_accuracy) == (0, None)


def test_from_dict_rejects_unknown_version() -> None:
    state = PerformanceEstimator().to_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        PerformanceEstimator.from_dict(state)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("window_size", 0),
        ("window_size", 2.5),
        ("window_size", True),
        ("calibration_size", 0),
        ("calibration_size", "100"),
        ("bins", 0),
        ("bins", -3),
        ("prior_strength", -1.0),
        ("prior_strength", math.nan),
        ("prior_strength", math.inf),
        ("prior_strength", "2"),
    ],
)
def test_bad_settings_raise_configuration_error_naming_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        PerformanceEstimator(**{setting: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [-0.1, 1.5, math.nan])
def test_bad_confidence_raises_value_error(confidence: float) -> None:
    est = PerformanceEstimator()
    with pytest.raises(ValueError, match="confidence"):
        est.observe_prediction("p", confidence)
    with pytest.raises(ValueError, match="confidence"):
        est.observe_outcome(confidence, True)
    assert est.window_count == 0 and est.calibration_count == 0


def test_zero_prior_is_plain_binning_with_raw_fallback_in_empty_bins() -> None:
    est = PerformanceEstimator(bins=2, prior_strength=0.0)
    est.observe_outcome(0.9, False)
    assert est.calibrated(0.9) == 0.0  # the bin's observed accuracy
    assert est.calibrated(0.3) == 0.3  # empty bin: raw confidence


def test_integer_like_settings_are_accepted() -> None:
    est = PerformanceEstimator(window_size=np.int64(5), bins=np.int32(4), prior_strength=1)  # type: ignore[arg-type]
    assert (est.window_size, est.bins, est.prior_strength) == (5, 4, 1.0)
    assert type(est.window_size) is int and type(est.prior_strength) is float
