"""The join rules of streams.join, one rule per test."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.events import LabelEvent, PredictionEvent, ReviewFlag
from streams.join import (Entry, Truth, Verdict, _copy, apply_label, apply_prediction, apply_review, class_key, iso,
                          outcome)


def pred(value="yes", pid="p-1", model="m", version="1", ts="2026-11-22T10:00:00Z", **kw):
    return PredictionEvent(prediction_id=pid, model=model, model_version=version, timestamp=ts,
                           features={"x": 1}, prediction=value, **kw)


def label(value, pid="p-1", ts="2026-11-22T11:00:00Z"):
    return LabelEvent(prediction_id=pid, label=value, timestamp=ts)


def review(verdict, corrected=None, pid="p-1", ts="2026-11-22T10:30:00Z"):
    return ReviewFlag(prediction_id=pid, reviewer="ana", verdict=verdict, corrected_label=corrected,
                      timestamp=ts)


def run(*events):
    """Apply events in order; return the final entry and the kinds of changes."""
    entry, kinds = None, []
    apply = {PredictionEvent: apply_prediction, LabelEvent: apply_label, ReviewFlag: apply_review}
    for event in events:
        entry, change = apply[type(event)](entry, event)
        kinds.append(change.kind)
    return entry, kinds


def test_label_after_prediction_gives_revision_one():
    entry, kinds = run(pred("yes"), label("no"))
    assert kinds == ["pending", "revised"]
    o = outcome(entry)
    assert (o["label"], o["correct"], o["label_source"], o["revision"]) == ("no", False, "label", 1)
    assert o["predicted_at"] == "2026-11-22T10:00:00+00:00"
    assert o["labeled_at"] == "2026-11-22T11:00:00+00:00"


def test_label_before_prediction_waits_for_it():
    entry, kinds = run(label("yes"), pred("yes"))
    assert kinds == ["pending", "revised"]
    assert entry.verdict.correct is True and entry.revision == 1


def test_agreeing_duplicate_label_changes_nothing():
    entry, kinds = run(pred("yes"), label("no"), label("no", ts="2026-11-23T00:00:00Z"))
    assert kinds[-1] == "unchanged" and entry.revision == 1


def test_disagreeing_label_revises_once():
    entry, kinds = run(pred("yes"), label("no"), label("yes"))
    assert kinds == ["pending", "revised", "revised"]
    assert entry.revision == 2 and entry.verdict.correct is True


def test_labels_outrank_reviews_in_either_order():
    first, _ = run(pred("yes"), label("no"), review("correct"))
    second, kinds = run(pred("yes"), review("correct"), label("no"))
    assert first.verdict.label == second.verdict.label == "no"
    assert first.verdict.source == second.verdict.source == "label"
    assert kinds == ["pending", "revised", "revised"] and second.revision == 2


def test_a_label_after_an_agreeing_review_takes_over_the_source():
    entry, kinds = run(pred("yes"), review("correct"), label("yes"))
    assert kinds[-1] == "revised" and entry.revision == 2
    assert (entry.verdict.source, entry.verdict.labeled_at_iso) == ("label", "2026-11-22T11:00:00+00:00")
    other, _ = run(pred("yes"), label("yes"), review("correct"))
    assert other.verdict == entry.verdict


def test_an_agreeing_label_keeps_the_first_time_and_spelling_in_any_order():
    late = label("2", ts="2026-11-22T12:00:00Z")
    before, _ = run(label(2), late, pred(2))
    after, kinds = run(pred(2), label(2), late)
    assert before.verdict == after.verdict and kinds[-1] == "unchanged"
    assert (after.verdict.label, after.verdict.labeled_at_iso) == (2, "2026-11-22T11:00:00+00:00")


def test_an_agreeing_review_changes_nothing():
    entry, kinds = run(pred("yes"), review("error", "no"), review("error", "no", ts="2026-11-22T11:30:00Z"))
    assert kinds[-1] == "unchanged" and entry.verdict.labeled_at_iso == "2026-11-22T10:30:00+00:00"


def test_review_verdicts():
    ok, _ = run(pred("yes"), review("correct"))
    assert (ok.verdict.label, ok.verdict.correct) == ("yes", True)
    fixed, _ = run(pred("yes"), review("error", "no"))
    assert (fixed.verdict.label, fixed.verdict.correct) == ("no", False)
    unknown, _ = run(pred("yes"), review("error"))
    assert (unknown.verdict.label, unknown.verdict.correct) == (None, False)


def test_canonical_class_comparison():
    entry, _ = run(pred(1), label("1"))
    assert entry.verdict.correct is True
    entry, _ = run(pred(True), label("true"))
    assert entry.verdict.correct is True
    assert class_key(False) == "false"


def test_regression_has_no_correctness_and_needs_a_number():
    entry, _ = run(pred(2.5), label(3))
    assert entry.verdict.correct is None and entry.verdict.label == 3
    entry, kinds = run(pred(2.5), label("three"))
    assert kinds[-1] == "invalid" and entry.verdict is None


def test_a_prediction_drops_earlier_truth_it_cannot_use():
    entry, change = apply_label(None, label("x"))
    entry, change = apply_prediction(entry, pred(2.5))
    assert (change.kind, change.dropped) == ("pending", 1)
    assert entry.prediction is not None and entry.label is None


def test_duplicate_and_conflicting_predictions():
    entry, kinds = run(pred("yes"), pred("yes", ts="2026-11-22T11:00:00+01:00"))
    assert kinds == ["pending", "duplicate"]
    for other in (pred("no"), pred(1), pred("yes", tags={"r": "eu"})):
        entry, kinds = run(pred("yes"), other)
        assert kinds == ["pending", "conflict"] and entry.prediction.prediction == "yes"
    changed_features = PredictionEvent(**{**pred("yes").model_dump(), "features": {"x": 2}})
    assert run(pred("yes"), changed_features)[1] == ["pending", "conflict"]


@pytest.mark.parametrize("events", [
    (pred("yes", scores={"yes": 0.8, "no": 0.2}, tags={"r": "eu"}), label("no"), review("error")),
    (label(2),),
    (pred(1.5), review("correct")),
])
def test_entry_round_trips_through_its_list_form(events):
    entry, _ = run(*events)
    assert Entry.from_list(entry.to_list()) == entry


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
def test_iso_writes_what_isoformat_writes(moment, offset_minutes):
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert iso(aware) == aware.isoformat()


@pytest.mark.parametrize("spelling", ["2026-11-22T10:00:00Z", "2026-11-22T10:00:00.000001+14:00",
                                      "2026-11-22T10:00:00.5-03:30", 1795428000.25])
def test_iso_of_a_validated_timestamp_is_its_isoformat(spelling):
    moment = label("no", ts=spelling).timestamp
    assert iso(moment) == moment.isoformat()


def test_copying_an_entry_keeps_every_field():
    """The join copies entries field by field (cheaper than dataclasses.replace): none may be missed."""
    entry, _ = run(pred("yes", scores={"yes": 0.8, "no": 0.2}, tags={"r": "eu"}), label("no"), review("error"))
    entry.event, entry.first_seen = b"{}", 12.5
    assert entry.label is not None and entry.review is not None and entry.verdict is not None
    assert isinstance(entry.label, Truth) and isinstance(entry.verdict, Verdict) and entry.revision
    copy = _copy(entry, "other-id", 99.0)
    assert copy is not entry
    for f in fields(Entry):
        assert getattr(copy, f.name) == getattr(entry, f.name), f.name
