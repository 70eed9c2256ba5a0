"""Tests of feedback_loop.metrics.window against brute force."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.metrics import (
    METRIC_FIELDS,
    Accumulator,
    RollingWindow,
    Sample,
    make_sample,
)
from feedback_loop.metrics.window import linear_quantile

CLASSES = ["a", "b", "c"]
N_IDS = 30


def sample_for(pid: int, at: float, label: str | None, delay: float, regression: bool = False) -> Sample:
    if regression:
        return make_sample(f"id{pid}", at, float(pid), None if label is None else float(len(label) + pid % 3), None, None, delay)
    pred = CLASSES[pid % len(CLASSES)]
    scores = {k: (0.6 if k == pred else 0.2) for k in CLASSES}
    return make_sample(f"id{pid}", at, pred, label, None, scores, delay)


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[Sample]]:
    """A window size and a stream of upserts; predicted_at is stable per id (ties allowed)."""
    size = draw(st.integers(1, 12))
    times = draw(st.lists(st.sampled_from([0.0, 1.0, 2.5, 3.0, 7.0, 1e9]), min_size=N_IDS, max_size=N_IDS))
    regression = draw(st.booleans())
    ops = draw(
        st.lists(
            st.tuples(
                st.integers(0, N_IDS - 1),
                st.one_of(st.none(), st.sampled_from(CLASSES)),
                st.floats(0.0, 1e4),
            ),
            max_size=80,
        )
    )
    return size, [sample_for(pid, times[pid], label, delay, regression) for pid, label, delay in ops]


def brute_force(stream: list[Sample], size: int) -> list[Sample]:
    latest: dict[str, Sample] = {}
    for s in stream:
        latest[s.prediction_id] = s
    return sorted(latest.values(), key=lambda s: (s.predicted_at, s.prediction_id))[-size:]


def window_of(stream: list[Sample], size: int) -> RollingWindow:
    w = RollingWindow(size)
    for s in stream:
        w.upsert(s)
    return w


@settings(max_examples=200, deadline=None)
@given(case=streams())
def test_upserts_match_brute_force_at_every_step(case):
    size, stream = case
    w = RollingWindow(size)
    for i, s in enumerate(stream):
        w.upsert(s)
        want = brute_force(stream[: i + 1], size)
        assert w.samples() == want
        assert len(w) == len(want) <= size


@settings(max_examples=150, deadline=None)
@given(case=streams(), data=st.data())
def test_merged_partitions_match_brute_force(case, data):
    size, stream = case
    n_parts = data.draw(st.integers(1, 4))
    part_of = data.draw(st.lists(st.integers(0, n_parts - 1), min_size=N_IDS, max_size=N_IDS))
    # Partition by prediction id, as a keyed Kafka topic would.
    parts = [window_of([s for s in stream if part_of[int(s.prediction_id[2:])] == k], size) for k in range(n_parts)]
    merged = RollingWindow.merged(parts, size)
    assert merged.samples() == brute_force(stream, size)
    assert merged.result() == window_of(stream, size).result()
    # The merged window keeps working as a window.
    extra = sample_for(0, 5e9, "a", 1.0)
    merged.upsert(extra)
    assert merged.samples() == brute_force([*stream, extra], size)


@settings(max_examples=150, deadline=None)
@given(case=streams())
def test_result_is_exact(case):
    size, stream = case
    w = window_of(stream, size)
    kept = brute_force(stream, size)
    got = w.result()
    assert tuple(got) == METRIC_FIELDS
    want = Accumulator.of(kept).result()
    for k in METRIC_FIELDS:
        if k.startswith("label_delay"):
            continue
        assert got[k] == want[k], k
    if kept:
        delays = np.array([s.delay for s in kept])
        for k, q in (("label_delay_p50", 50), ("label_delay_p95", 95)):
            assert got[k] == float(np.percentile(delays, q)), k  # bit for bit
    else:
        assert got["label_delay_p50"] is None and got["label_delay_p95"] is None


@settings(max_examples=200, deadline=None)
@given(case=streams(), reads=st.lists(st.booleans(), min_size=80, max_size=80))
def test_a_window_read_between_upserts_equals_a_recount_at_every_step(case, reads):
    """From its first read on a window keeps its metrics up to date: at every step they are
    what a window built from the same upserts and read once computes, bit for bit."""
    size, stream = case
    w = RollingWindow(size)
    w.result()  # read from the start: every upsert then updates the kept metrics
    for i, s in enumerate(stream):
        w.upsert(s)
        if reads[i]:
            assert w.result() == window_of(stream[: i + 1], size).result()
    assert w.result() == window_of(stream, size).result()


def test_a_window_first_read_late_counts_what_it_holds():
    w = RollingWindow(2)
    for pid, at in [(0, 1.0), (1, 2.0), (2, 3.0)]:
        w.upsert(sample_for(pid, at, "a", float(pid)))
    r = w.result()  # id0 was evicted before the first read
    assert (r["count"], r["label_delay_p50"]) == (2, 1.5)
    w.upsert(sample_for(3, 4.0, "b", 10.0))  # evicts id1
    w.upsert(sample_for(2, 3.0, "b", 4.0))  # revises id2
    r = w.result()
    assert (r["count"], r["label_delay_p50"], r["label_delay_p95"]) == (2, 7.0, 9.7)
    assert r == window_of([sample_for(3, 4.0, "b", 10.0), sample_for(2, 3.0, "b", 4.0)], 2).result()


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(0.0, 1e12, allow_nan=False), min_size=1, max_size=60),
       q=st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.95, 1.0]))
def test_linear_quantile_is_numpy_percentile_bit_for_bit(values, q):
    ordered = sorted(values)
    assert linear_quantile(ordered, q) == float(np.percentile(np.array(values), q * 100))


def test_result_is_a_copy_and_tracks_upserts():
    w = RollingWindow(3)
    w.upsert(sample_for(0, 1.0, "a", 1.0))
    r = w.result()
    r["count"] = 99
    assert w.result()["count"] == 1
    w.upsert(sample_for(1, 2.0, "b", 1.0))
    assert w.result()["count"] == 2


def test_revision_replaces_sample():
    w = RollingWindow(3)
    w.upsert(sample_for(0, 1.0, "b", 1.0))  # prediction "a", wrong
    w.upsert(sample_for(1, 2.0, "b", 1.0))  # prediction "b", right
    assert w.result()["accuracy"] == 0.5
    w.upsert(sample_for(0, 1.0, "a", 5.0))  # revised label: now right
    assert len(w) == 2
    assert w.get("id0").label == "a"
    r = w.result()
    assert (r["count"], r["correct"], r["accuracy"], r["label_delay_p50"]) == (2, 2, 1.0, 3.0)
    w.upsert(sample_for(0, 1.0, None, 5.0))  # reviewer: wrong, true label unknown
    assert w.result()["accuracy"] == 0.5


def test_sample_below_full_window_is_not_kept():
    w = RollingWindow(2)
    for pid, at in [(0, 5.0), (1, 6.0)]:
        w.upsert(sample_for(pid, at, "a", 0.0))
    w.upsert(sample_for(2, 1.0, "a", 0.0))
    assert "id2" not in w and len(w) == 2
    w.upsert(sample_for(2, 5.0, "a", 0.0))  # same time as id0, larger id: kept
    assert [s.prediction_id for s in w.samples()] == ["id2", "id1"]


def test_changed_predicted_at_replaces_in_place_and_heap_stays_bounded():
    w = RollingWindow(3)
    for pid in range(3):
        w.upsert(sample_for(pid, float(pid), "a", 0.0))
    for i in range(1000):
        w.upsert(sample_for(0, 10.0 + i, "a", 0.0))
    assert [s.prediction_id for s in w.samples()] == ["id1", "id2", "id0"]
    assert len(w._heap) <= 2 * len(w) + 17
    w.upsert(sample_for(3, 5.0, "a", 0.0))  # evicts the smallest key, id1
    assert [s.prediction_id for s in w.samples()] == ["id2", "id3", "id0"]


@settings(max_examples=100, deadline=None)
@given(case=streams())
def test_dict_round_trip_through_orjson(case):
    size, stream = case
    w = window_of(stream, size)
    d = w.to_dict()
    assert orjson.loads(orjson.dumps(d)) == d
    back = RollingWindow.from_dict(orjson.loads(orjson.dumps(d)))
    assert back.size == w.size
    assert back.samples() == w.samples()
    assert back.result() == w.result()


def test_empty_window():
    w = RollingWindow(5)
    assert len(w) == 0 and w.samples() == []
    assert w.result() == {**dict.fromkeys(METRIC_FIELDS), "count": 0, "correct": 0}
    assert RollingWindow.merged([], 5).samples() == []


def test_bad_size():
    with pytest.raises(ValueError):
        RollingWindow(0)
