"""The join of predictions, labels and reviewer verdicts by ``prediction_id``: pure functions.

The rules (``DESIGN.md``, "Join semantics"):

* a label or a verdict may arrive before, after or long after its prediction; duplicates happen;
* a prediction has at most one outcome at a time; truth that arrives again and agrees changes
  nothing; truth that disagrees revises the outcome (``revision`` grows by one);
* ground-truth labels outrank reviewer verdicts; among labels (and among verdicts) the one that
  arrived last wins, except that a label agreeing with the one held changes nothing (the first
  keeps its time and spelling); a verdict of ``"correct"`` confirms the prediction; ``"error"``
  without a corrected label marks it wrong with the true class unknown;
* the first ground-truth label after a reviewer's verdict revises the outcome even when it agrees
  (``label_source`` becomes ``"label"``), so the final outcome never depends on the order in
  which a worker happened to read the labels and review-flags topics;
* class labels compare by their canonical text (:func:`class_key`), so a label ``"1"`` confirms a
  prediction ``1`` and ``true`` matches ``"true"`` (numbers also compare by value: ``2 == 2.0``); when the true class is known, ``correct`` is
  ``label == prediction`` (even for an "error" verdict whose corrected label equals the prediction);
* a float prediction is a regression: its label must be a number and ``correct`` is ``None``.

Nothing here does I/O: :mod:`streams.partition` holds the entries and turns changes into
outcomes and metric updates.

Examples
--------
>>> from feedback_loop.events import PredictionEvent, LabelEvent
>>> p = PredictionEvent(prediction_id="p-1", model="m", model_version="1",
...     timestamp="2026-11-22T10:00:00Z", features={}, prediction="yes")
>>> entry, change = apply_label(None, LabelEvent(prediction_id="p-1", label="no",
...     timestamp="2026-11-22T11:00:00Z"))
>>> change.kind, change.revised
('pending', False)
>>> entry, change = apply_prediction(entry, p)
>>> change.revised, entry.verdict.correct, entry.revision
(True, False, 1)
>>> entry, change = apply_label(entry, LabelEvent(prediction_id="p-1", label="no",
...     timestamp="2026-11-22T12:00:00Z"))
>>> change.kind, entry.revision
('unchanged', 1)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Union

import orjson

from feedback_loop.events import LabelEvent, PredictionEvent, ReviewFlag, decode, json_bytes
from feedback_loop.quick_decode import quick_prediction

Target = Union[bool, int, str, float]


def class_key(value: Target) -> str:
    """Canonical text of a class label.

    >>> class_key(True), class_key(1), class_key("1"), class_key("yes")
    ('true', '1', '1', 'yes')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def same_label(a: Target | None, b: Target | None) -> bool:
    """Whether two labels name the same truth.

    >>> same_label(1, "1"), same_label(2, 2.0), same_label(True, 1), same_label(None, None)
    (True, True, False, True)
    """
    if a is None or b is None:
        return a is None and b is None
    if class_key(a) == class_key(b):
        return True
    return _is_number(a) and _is_number(b) and float(a) == float(b)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def iso(moment: datetime) -> str:
    """``moment.isoformat()`` of an aware datetime, at a third of the cost (orjson writes the same
    RFC 3339 text for every offset an event's timestamp can carry).

    >>> from datetime import datetime, timedelta, timezone
    >>> at = datetime(2026, 11, 22, 10, 0, 0, 3000, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    >>> iso(at), iso(at) == at.isoformat()
    ('2026-11-22T10:00:00.003000-03:30', True)
    """
    return orjson.dumps(moment)[1:-1].decode()


def _features_digest(features: dict[str, Any]) -> str:
    return hashlib.blake2b(json_bytes(features, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


def confidence_of(event: PredictionEvent) -> float | None:
    """The event's ``confidence``, else the score of its predicted class, else ``None``.

    >>> from feedback_loop.events import PredictionEvent
    >>> confidence_of(PredictionEvent(prediction_id="p", model="m", model_version="1",
    ...     timestamp="2026-11-22T10:00:00Z", features={}, prediction=True, scores={"true": 0.7}))
    0.7
    """
    if event.confidence is not None:
        return event.confidence
    if event.scores and not is_regression(event.prediction):
        return event.scores.get(class_key(event.prediction))
    return None


def is_regression(prediction: Target) -> bool:
    """A float prediction is a regression; strings, ints and bools are class labels."""
    return isinstance(prediction, float)


@dataclass(slots=True)
class Prediction:
    """What the join keeps of a prediction. The features travel on with the outcome (the learners
    and the review router need them when the truth arrives); their digest tells a re-sent
    prediction from a different one under the same id, and is computed only for that comparison
    (``features_digest`` is empty unless a checkpoint written with it was restored)."""

    model: str
    model_version: str
    prediction: Target
    predicted_at: float
    predicted_at_iso: str
    tags: dict[str, str]
    scores: dict[str, float] | None
    features_digest: str = ""
    confidence: float | None = None
    features: dict[str, Any] | None = None

    @classmethod
    def from_event(cls, event: PredictionEvent) -> Prediction:
        # the event's dicts are its own and the event is dropped after: no copies
        return cls(
            event.model, event.model_version, event.prediction, event.timestamp.timestamp(),
            iso(event.timestamp), event.tags, event.scores, "", confidence_of(event), event.features,
        )

    def digest(self) -> str:
        """The features' digest (a restored checkpoint may hold it already)."""
        return self.features_digest or _features_digest(self.features or {})

    def same_as(self, other: Prediction) -> bool:
        """Same prediction, whatever the spelling of its timestamp."""
        return (self.model, self.model_version, type(self.prediction), self.prediction, self.predicted_at,
                self.tags, self.scores) == (
            other.model, other.model_version, type(other.prediction), other.prediction,
            other.predicted_at, other.tags, other.scores) and self.digest() == other.digest()


@dataclass(slots=True)
class Truth:
    """A ground-truth label or a reviewer's verdict, as last received."""

    source: Literal["label", "review"]
    label: Target | None
    at: float
    at_iso: str
    verdict: Literal["error", "correct"] | None = None
    reviewer: str | None = None


@dataclass(slots=True)
class Verdict:
    """The current truth of a prediction, as published in its latest outcome."""

    label: Target | None
    correct: bool | None
    source: Literal["label", "review"]
    labeled_at: float
    labeled_at_iso: str

    def agrees_with(self, other: Verdict | None) -> bool:
        """Same truth from the same kind of source, whatever its time or spelling."""
        return (other is not None and self.source == other.source and self.correct == other.correct
                and same_label(self.label, other.label))


@dataclass(slots=True)
class Entry:
    """Everything known about one prediction id."""

    prediction_id: str
    prediction: Prediction | None = None
    label: Truth | None = None
    review: Truth | None = None
    verdict: Verdict | None = None
    revision: int = 0
    first_seen: float = 0.0
    #: the prediction event's bytes while the entry holds nothing else and is not checkpointed yet
    event: bytes | None = field(default=None, compare=False, repr=False)

    def encode(self) -> bytes:
        """The checkpoint form; :meth:`decode` inverts it.

        An entry that holds only its prediction is stored as the prediction event's own bytes
        (``event``, then dropped: it is needed once), which costs nothing to write; any other is
        the JSON of :meth:`to_list`.

        >>> raw = (b'{"prediction_id":"p-1","model":"m","model_version":"1",'
        ...        b'"timestamp":"2026-11-22T10:00:00Z","features":{"a":1},"prediction":"yes"}')
        >>> entry, _ = apply_prediction(None, decode(PredictionEvent, raw))
        >>> entry.event = raw
        >>> entry.encode() == raw, entry.event, Entry.decode(raw).entry() == entry
        (True, None, True)
        >>> Entry.decode(entry.encode()) == entry  # the list form, now that the event is dropped
        True
        """
        fresh = self.event
        if fresh is not None:
            self.event = None
            if self.label is None and self.review is None and self.verdict is None:
                return fresh
        return json_bytes(self.to_list())

    @classmethod
    def decode(cls, raw: bytes) -> Entry | Waiting:
        """The entry that :meth:`encode` (or :meth:`Waiting.encode`) wrote."""
        if raw[:1] == b"[":  # the list form (orjson's, so no leading whitespace)
            return cls.from_list(orjson.loads(raw))
        # a prediction event as its producer wrote it, validated when it was first applied
        quick = quick_prediction(raw)
        if quick is not None:
            return Waiting(quick, raw, quick.timestamp.timestamp())
        entry, _ = apply_prediction(None, decode(PredictionEvent, raw))
        assert entry is not None
        return entry

    def to_list(self) -> list[Any]:
        """Compact JSON-able form; :meth:`from_list` inverts it."""
        p = self.prediction
        return [
            self.prediction_id,
            None if p is None else [p.model, p.model_version, p.prediction, p.predicted_at,
                                    p.predicted_at_iso, p.tags, p.scores, p.features_digest,
                                    p.confidence, p.features],
            None if self.label is None else _truth_list(self.label),
            None if self.review is None else _truth_list(self.review),
            None if self.verdict is None else [self.verdict.label, self.verdict.correct,
                                               self.verdict.source, self.verdict.labeled_at,
                                               self.verdict.labeled_at_iso],
            self.revision,
            self.first_seen,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> Entry:
        pid, p, label, review, verdict, revision, first_seen = data
        return cls(
            pid,
            None if p is None else Prediction(*p),
            None if label is None else Truth(*label),
            None if review is None else Truth(*review),
            None if verdict is None else Verdict(*verdict),
            revision,
            first_seen,
        )


class Waiting:
    """A new prediction waiting for its truth, held as it came: the decoded event, its bytes, its
    time. Most entries are this (every prediction is, until its label), so it is kept lean: the
    :class:`Entry` is built when truth arrives (:meth:`entry`); the checkpoint is the bytes.

    >>> from feedback_loop.quick_decode import quick_prediction
    >>> raw = (b'{"prediction_id":"p-1","model":"m","model_version":"1",'
    ...        b'"timestamp":"2026-11-22T10:00:00Z","features":{"a":1},"prediction":"yes"}')
    >>> event = quick_prediction(raw)
    >>> waiting = Waiting(event, raw, event.timestamp.timestamp())
    >>> waiting.encode() == raw, Entry.decode(raw) == waiting, waiting.entry() == Entry.decode(raw).entry()
    (True, True, True)
    >>> waiting.entry().prediction.predicted_at == waiting.predicted_at
    True
    """

    __slots__ = ("event", "predicted_at", "raw")

    def __init__(self, event: Any, raw: bytes, predicted_at: float) -> None:
        self.event, self.raw, self.predicted_at = event, raw, predicted_at

    @property
    def prediction_id(self) -> str:
        return self.event.prediction_id

    def entry(self) -> Entry:
        """The entry of this prediction, as :func:`apply_prediction` makes it."""
        entry, _ = apply_prediction(None, self.event)
        assert entry is not None
        return entry

    def encode(self) -> bytes:
        """The checkpoint form: the event's bytes (see :meth:`Entry.decode`)."""
        return self.raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Waiting) and self.raw == other.raw

    def __repr__(self) -> str:
        return f"Waiting({self.prediction_id!r}, predicted_at={self.predicted_at!r})"


def _truth_list(t: Truth) -> list[Any]:
    return [t.source, t.label, t.at, t.at_iso, t.verdict, t.reviewer]


ChangeKind = Literal["pending", "revised", "unchanged", "duplicate", "conflict", "invalid"]


@dataclass(slots=True)
class Change:
    """What one event did to an entry.

    ``kind`` is ``"revised"`` when the outcome changed (``previous`` is the verdict it replaced,
    ``None`` for the first outcome), ``"pending"`` when the event was stored waiting for its
    counterpart, ``"unchanged"`` when it agreed with what was known, ``"duplicate"`` for a
    prediction seen before, ``"conflict"`` for a different prediction under a known id and
    ``"invalid"`` for truth that cannot apply (``reason`` says why); the last two are dead-lettered.
    ``dropped`` counts earlier truths a new prediction could not use (a word for a regression).
    """

    kind: ChangeKind
    previous: Verdict | None = None
    reason: str = ""
    dropped: int = 0

    @property
    def revised(self) -> bool:
        return self.kind == "revised"


_PENDING = Change("pending")


def resolve(entry: Entry) -> Verdict | None:
    """The verdict the entry's evidence supports, or ``None`` while it has no outcome."""
    p = entry.prediction
    truth = entry.label or entry.review
    if p is None or truth is None:
        return None
    if truth.source == "review" and truth.verdict == "correct":
        label: Target | None = p.prediction
    else:
        label = truth.label
    if is_regression(p.prediction):
        correct = None
    elif label is None:
        correct = False
    else:
        correct = class_key(label) == class_key(p.prediction)
    return Verdict(label, correct, truth.source, truth.at, truth.at_iso)


def _check_truth(entry: Entry) -> str:
    p, truth = entry.prediction, entry.label or entry.review
    if p is None or truth is None or truth.label is None or not is_regression(p.prediction):
        return ""
    if isinstance(truth.label, bool) or not isinstance(truth.label, (int, float)):
        return (f"label {truth.label!r} is not a number, but prediction {entry.prediction_id} "
                f"of model {p.model} is a regression")
    return ""


def _settle(entry: Entry, before: Entry | None) -> tuple[Entry | None, Change]:
    """Recompute the verdict after an event; revise when the truth changed.

    An invalid event leaves the entry as it was before (``None`` when there was none).
    """
    reason = _check_truth(entry)
    if reason:
        return before, Change("invalid", reason=reason)
    new = resolve(entry)
    old = entry.verdict
    if new is None:
        return entry, Change("pending")
    if new.agrees_with(old):
        return entry, Change("unchanged")
    entry.verdict = new
    entry.revision += 1
    return entry, Change("revised", previous=old)


def _copy(entry: Entry | None, pid: str, at: float) -> Entry:
    if entry is None:
        return Entry(pid, first_seen=at)
    # (dataclasses.replace, field by field, costs several times this)
    return Entry(entry.prediction_id, entry.prediction, entry.label, entry.review, entry.verdict,
                 entry.revision, entry.first_seen, entry.event)


def apply_prediction(entry: Entry | None, event: PredictionEvent) -> tuple[Entry | None, Change]:
    """Apply a prediction; a repeated identical prediction changes nothing."""
    record = Prediction.from_event(event)
    if entry is None:  # the common case: nothing known yet, the prediction waits for its truth
        return Entry(event.prediction_id, record, first_seen=record.predicted_at), _PENDING
    if entry is not None and entry.prediction is not None:
        if entry.prediction.same_as(record):
            return entry, Change("duplicate")
        return entry, Change(
            "conflict",
            reason=f"prediction_id {event.prediction_id} already holds a different prediction "
                   f"(model {entry.prediction.model} version {entry.prediction.model_version})",
        )
    new = _copy(entry, event.prediction_id, record.predicted_at)
    new.prediction = record
    dropped = 0
    while _check_truth(new):  # truth received earlier that cannot apply to this prediction
        if new.label is not None:
            new.label = None
        else:
            new.review = None
        dropped += 1
    new, change = _settle(new, entry)
    return new, (replace(change, dropped=dropped) if dropped else change)


def apply_label(entry: Entry | None, event: LabelEvent) -> tuple[Entry | None, Change]:
    """Apply a ground-truth label: it replaces a disagreeing earlier label and outranks verdicts."""
    at = event.timestamp.timestamp()
    if entry is not None and entry.label is not None and same_label(entry.label.label, event.label):
        return entry, Change("unchanged")
    new = _copy(entry, event.prediction_id, at)
    new.label = Truth("label", event.label, at, iso(event.timestamp))
    return _settle(new, entry)


def apply_review(entry: Entry | None, event: ReviewFlag) -> tuple[Entry | None, Change]:
    """Apply a reviewer's verdict: it counts only while no ground-truth label is known."""
    at = event.timestamp.timestamp()
    held = None if entry is None else entry.review
    if held is not None and held.verdict == event.verdict and same_label(held.label, event.corrected_label):
        return entry, Change("unchanged")
    new = _copy(entry, event.prediction_id, at)
    new.review = Truth("review", event.corrected_label, at, iso(event.timestamp),
                       event.verdict, event.reviewer)
    return _settle(new, entry)


def outcome(entry: Entry) -> dict[str, Any]:
    """The Outcome event (as a dict) of an entry's current verdict."""
    p, v = entry.prediction, entry.verdict
    assert p is not None and v is not None, "outcome() needs a prediction and a verdict"
    return {
        "prediction_id": entry.prediction_id,
        "model": p.model,
        "model_version": p.model_version,
        "prediction": p.prediction,
        "label": v.label,
        "correct": v.correct,
        "label_source": v.source,
        "revision": entry.revision,
        "predicted_at": p.predicted_at_iso,
        "labeled_at": v.labeled_at_iso,
        "tags": p.tags,
    }
