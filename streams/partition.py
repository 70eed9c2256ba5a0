"""The join state of one partition and the pure processing of its records.

A :class:`PartitionState` holds, for one partition shared by ``predictions``, ``labels`` and
``review-flags`` (all keyed by ``prediction_id``, so co-partitioned):

* one :class:`~streams.join.Entry` per prediction id still in play,
* one :class:`Aggregate` per (model, model version, segment) with cumulative metrics, the
  partition's share of the rolling window and the prediction / expiry counters,
* the last applied offset of each source topic, so a record delivered twice (at-least-once,
  after a crash or a rebalance) is applied once,
* the event-time watermark that drives TTL expiry (see :meth:`PartitionState.advance_watermark`).

:meth:`PartitionState.apply` diverts, never crashes: an undecodable, invalid, oversized or
mis-keyed record becomes a dead letter. It returns the messages to publish; the caller publishes
them, then checkpoints the state (:mod:`streams.checkpoint`), then commits the offsets.

Aggregates of several partitions merge by addition (and the rolling windows by a top-N union),
see :mod:`feedback_loop.snapshots`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

import orjson

from feedback_loop.errors import InvalidEventError
from feedback_loop.events import LabelEvent, PredictionEvent, ReviewFlag, dead_letter, decode, json_bytes
from feedback_loop.quick_decode import QuickPrediction, quick_label, quick_prediction
from feedback_loop.metrics import Accumulator, RollingWindow, Sample, make_sample
from streams import join
from streams.join import Entry, Waiting
from streams.observations import monitor_key, outcome_observation, prediction_observation, waiting_observation

if TYPE_CHECKING:
    from feedback_loop.settings import Settings

#: (model, model_version, tag name, tag value); ("", "") for the whole model version.
AggKey = tuple[str, str, str, str]

#: The inputs whose event times drive the watermark.
WATERMARK_INPUTS = ("predictions", "labels")
SOURCES = {"predictions": PredictionEvent, "labels": LabelEvent, "review-flags": ReviewFlag}
#: Decoders of the usual shape of an input, without pydantic (``None``: use ``decode``).
_QUICK = {"predictions": quick_prediction, "labels": quick_label}
_APPLY = {"predictions": join.apply_prediction, "labels": join.apply_label,
          "review-flags": join.apply_review}


class Record(NamedTuple):
    """One consumed message, independent of the Kafka client that read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Emit(NamedTuple):
    """A message to publish: ``kind`` is ``"outcomes"``, ``"dead-letters"`` or ``"monitor-input"``."""

    kind: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Aggregate:
    """Metrics state of one model version and segment within one partition."""

    cumulative: Accumulator
    rolling: RollingWindow
    predictions: int = 0
    expired_unlabeled: int = 0

    @classmethod
    def empty(cls, window_size: int) -> Aggregate:
        return cls(Accumulator(), RollingWindow(window_size))

    def to_dict(self) -> dict[str, Any]:
        """Everything but the rolling window, whose samples are stored one by one."""
        return {"cumulative": self.cumulative.to_dict(), "predictions": self.predictions,
                "expired_unlabeled": self.expired_unlabeled}

    @classmethod
    def from_dict(cls, data: dict[str, Any], window_size: int) -> Aggregate:
        return cls(Accumulator.from_dict(data["cumulative"]), RollingWindow(window_size),
                   data["predictions"], data["expired_unlabeled"])


def segments(prediction: join.Prediction | QuickPrediction) -> Iterator[AggKey]:
    """The aggregate keys one prediction (or prediction event) counts in: the whole version, then one
    per tag."""
    yield (prediction.model, prediction.model_version, "", "")
    for name, value in prediction.tags.items():
        yield (prediction.model, prediction.model_version, name, value)


def encode_agg_key(key: AggKey) -> bytes:
    return orjson.dumps(key)


def decode_agg_key(raw: bytes | str) -> AggKey:
    model, version, name, value = orjson.loads(raw)
    return (model, version, name, value)


def encode_window_field(key: AggKey, sample: Sample) -> bytes:
    """Redis field of one rolling-window sample: enough to pick the top N without its value."""
    return orjson.dumps([*key, sample.predicted_at, sample.prediction_id])


def decode_window_field(raw: bytes | str) -> tuple[AggKey, float, str]:
    model, version, name, value, predicted_at, pid = orjson.loads(raw)
    return (model, version, name, value), predicted_at, pid


def _value(target: join.Target) -> str | float:
    """A prediction or label as the monitor sees it: a number for regression, else canonical text."""
    return float(target) if join.is_regression(target) else join.class_key(target)


def to_sample(entry: Entry, verdict: join.Verdict) -> Sample:
    """The metrics contribution of ``entry`` under ``verdict``."""
    p = entry.prediction
    assert p is not None
    if join.is_regression(p.prediction):
        label = None if verdict.label is None else float(verdict.label)
        prediction: str | float = float(p.prediction)
    else:
        label = None if verdict.label is None else join.class_key(verdict.label)
        prediction = join.class_key(p.prediction)
    return make_sample(entry.prediction_id, p.predicted_at, prediction, label, verdict.correct,
                       p.scores, verdict.labeled_at - p.predicted_at)


@dataclass
class PartitionState:
    """Join entries, aggregates, offsets and watermark of one partition (see module doc)."""

    partition: int
    ttl: float
    retention: float
    window_size: int
    max_event_bytes: int = 1_000_000
    idle_seconds: float = 30.0
    topic_kinds: dict[str, str] = field(default_factory=lambda: {k: k for k in SOURCES})
    entries: dict[str, Entry | Waiting] = field(default_factory=dict)
    aggregates: dict[AggKey, Aggregate] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    watermark: float = float("-inf")
    #: largest event time seen per input that drives the watermark, and when it was last fed (wall s)
    input_high: dict[str, float] = field(default_factory=dict)
    input_seen: dict[str, float] = field(default_factory=dict)
    #: decode predictions and labels with :mod:`feedback_loop.quick_decode` where it can (False:
    #: every record through pydantic and the general path, the reference the short path is tested against)
    quick: bool = True
    counters: dict[str, int] = field(default_factory=lambda: {
        "orphan_labels": 0, "duplicate_predictions": 0, "dead_letters": 0, "retired_outcomes": 0,
        "rejected_truths": 0})
    #: messages of the last checkpointed batch, maybe not published yet (see streams.checkpoint)
    leftover: list[Emit] = field(default_factory=list, repr=False)
    _deadlines: list[tuple[float, str]] = field(default_factory=list, repr=False)
    _dirty: set[str] = field(default_factory=set, repr=False)
    _removed: set[str] = field(default_factory=set, repr=False)
    _dirty_aggs: set[AggKey] = field(default_factory=set, repr=False)
    _window_changes: dict[AggKey, set[str]] = field(default_factory=dict, repr=False)
    _written_samples: dict[AggKey, dict[str, Sample]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_settings(cls, partition: int, settings: Settings) -> PartitionState:
        """An empty state of ``partition`` with the TTLs, window, limits and input topics of ``settings``."""
        t = settings.topics
        return cls(partition=partition, ttl=settings.prediction_ttl_seconds,
                   retention=settings.outcome_retention_seconds, window_size=settings.rolling_window,
                   max_event_bytes=settings.max_event_bytes, idle_seconds=settings.watermark_idle_seconds,
                   topic_kinds={t.predictions: "predictions", t.labels: "labels", t.review_flags: "review-flags"})

    # ----------------------------------------------------------------- processing
    def apply(self, record: Record, now: float = 0.0) -> list[Emit]:
        """Apply one record at wall time ``now``; return the outcomes and dead letters it produces.

        ``record`` is a :class:`Record` or anything with its fields (the join passes aiokafka's
        records as they are).

        A new prediction in the usual shape (:func:`~feedback_loop.quick_decode.quick_prediction`)
        under an id not seen yet, the most common record by far, takes a short path
        (:meth:`_wait`) to the same state and messages as the general one, which takes the rest.
        """
        topic = record.topic
        last = self.offsets.get(topic)
        if last is not None and record.offset <= last:
            return []  # already applied before a restart or rebalance
        self.offsets[topic] = record.offset
        kind = self.topic_kinds.get(topic)
        quick = _QUICK.get(kind) if self.quick else None  # (kind None: no decoder)
        value = record.value
        event = None
        if quick is not None and value is not None and len(value) <= self.max_event_bytes:
            event = quick(value)
            if (kind == "predictions" and event is not None and record.key == event.prediction_id.encode()
                    and event.prediction_id not in self.entries):
                return self._wait(event, value, now)
        if kind is None:
            return [self._dead(record, f"topic {record.topic!r} is not a join input")]
        try:
            event = self._decode(kind, record, event)
        except InvalidEventError as exc:
            return [self._dead(record, exc.reason)]
        pid = event.prediction_id
        before = self.entries.get(pid)
        if type(before) is Waiting:
            before = before.entry()
        entry, change = _APPLY[kind](before, event)
        if change.kind in ("conflict", "invalid"):
            return [self._dead(record, change.reason)]
        self.counters["rejected_truths"] += change.dropped
        if change.kind == "duplicate":
            self.counters["duplicate_predictions"] += 1
            return []
        assert entry is not None
        if before is None and kind == "predictions":
            entry.event = record.value  # checkpointed as it came (see Entry.encode)
        if kind in WATERMARK_INPUTS:
            # a new prediction's time is already read (labels are rarer: read theirs again)
            at = entry.prediction.predicted_at if kind == "predictions" else event.timestamp.timestamp()
            self.input_high[kind] = max(self.input_high.get(kind, float("-inf")), at)
            self.input_seen[kind] = now
        self.entries[pid] = entry
        self._touch(pid, entry)
        out: list[Emit] = []
        p = entry.prediction
        if kind == "predictions" and p is not None:
            for key in segments(p):
                self._aggregate(key).predictions += 1
            out.append(Emit("monitor-input", *prediction_observation(
                pid, p.model, p.model_version, p.predicted_at, event.features, _value(p.prediction),
                p.confidence, p.scores, p.tags, change.revised, (event.model_extra or {}).get("challenger"))))
        if not change.revised:
            return out
        self._count(entry, change.previous)
        assert p is not None and entry.verdict is not None
        verdict, previous = entry.verdict, change.previous
        out.append(Emit("outcomes", pid.encode(), json_bytes(join.outcome(entry))))
        regression = join.is_regression(p.prediction)
        label = None if verdict.label is None else (
            float(verdict.label) if regression else join.class_key(verdict.label))
        out.append(Emit("monitor-input", *outcome_observation(
            pid, p.model, p.model_version, p.predicted_at, verdict.labeled_at, verdict.correct,
            p.confidence, entry.revision, label, verdict.source, p.features, _value(p.prediction), p.scores,
            label is not None and (previous is None or previous.label is None))))
        return out

    def _wait(self, event: QuickPrediction, raw: bytes, now: float) -> list[Emit]:
        """A new prediction: it waits for its truth as it came (:class:`~streams.join.Waiting`)."""
        pid = event.prediction_id
        at = event.timestamp.timestamp()
        self.entries[pid] = Waiting(event, raw, at)
        self._dirty.add(pid)
        self._removed.discard(pid)
        heapq.heappush(self._deadlines, (at + self.ttl, pid))
        high = self.input_high.get("predictions")
        if high is None or at > high:
            self.input_high["predictions"] = at
        self.input_seen["predictions"] = now
        for key in segments(event):
            self._aggregate(key).predictions += 1
        return [Emit("monitor-input", monitor_key(event.model, event.model_version), waiting_observation(at, raw))]

    def apply_all(self, records: Iterable[Record], now: float = 0.0) -> list[Emit]:
        """Apply records in order, then expire what the advanced watermark makes due."""
        out: list[Emit] = []
        for record in records:
            out.extend(self.apply(record, now))
        self.expire(now)
        return out

    def advance_watermark(self, now: float) -> float:
        """Move the event-time watermark forward, never back.

        Predictions and labels are separate topics that a consumer reads at different paces
        (a replay may deliver hours of labels before the matching predictions), so the
        watermark is the smallest of their event-time highs: the slower input holds it back.
        An input that delivered nothing for ``idle_seconds`` of wall time stops holding it
        back; when every input is idle the watermark is the largest high. Reviewer verdicts
        are too sparse to drive it.
        """
        active = [high for kind, high in self.input_high.items()
                  if now - self.input_seen.get(kind, float("-inf")) < self.idle_seconds]
        if active:
            candidate = min(active)
        elif self.input_high:
            candidate = max(self.input_high.values())
        else:
            return self.watermark
        self.watermark = max(self.watermark, candidate)
        return self.watermark

    def expire(self, now: float = 0.0) -> int:
        """Drop entries whose deadline the watermark passed; count what never joined."""
        self.advance_watermark(now)
        done = 0
        heap = self._deadlines
        while heap and heap[0][0] < self.watermark:
            deadline, pid = heapq.heappop(heap)
            entry = self.entries.get(pid)
            if entry is None or self._deadline(entry) != deadline:
                continue  # superseded by a later push
            del self.entries[pid]
            self._dirty.discard(pid)
            self._removed.add(pid)
            done += 1
            if type(entry) is Waiting:  # a prediction without truth (its event has what segments reads)
                for key in segments(entry.event):
                    self._aggregate(key).expired_unlabeled += 1
            elif entry.prediction is None:
                self.counters["orphan_labels"] += 1
            elif entry.verdict is None:
                for key in segments(entry.prediction):
                    self._aggregate(key).expired_unlabeled += 1
            else:
                self.counters["retired_outcomes"] += 1
        return done

    def _decode(self, kind: str, record: Record, event: Any = None) -> Any:
        """The record's event, validated (``event``: what the quick decoder made of it, if it took it)."""
        if record.value is not None and len(record.value) > self.max_event_bytes:
            raise InvalidEventError(
                f"message of {len(record.value)} bytes exceeds max_event_bytes={self.max_event_bytes}")
        if event is None:
            event = decode(SOURCES[kind], record.value)
        if record.key is None or record.key != event.prediction_id.encode():
            got = "no key" if record.key is None else f"key {record.key.decode('utf-8', 'replace')!r}"
            raise InvalidEventError(
                f"message key must be the prediction_id {event.prediction_id!r} (got {got}); "
                "key every message by prediction_id so the join stays on one partition")
        return event

    def _dead(self, record: Record, reason: str) -> Emit:
        self.counters["dead_letters"] += 1
        letter = dead_letter(source_topic=record.topic, partition=record.partition,
                             offset=record.offset, key=record.key, payload=record.value,
                             reason=reason, max_payload_bytes=self.max_event_bytes)
        return Emit("dead-letters", record.key, letter.to_json())

    def _count(self, entry: Entry, previous: join.Verdict | None) -> None:
        assert entry.prediction is not None and entry.verdict is not None
        new = to_sample(entry, entry.verdict)
        old = None if previous is None else to_sample(entry, previous)
        for key in segments(entry.prediction):
            agg = self._aggregate(key)
            if old is not None:
                agg.cumulative.remove(old)
            agg.cumulative.add(new)
            evicted = agg.rolling.upsert(new)
            changed = self._window_changes.setdefault(key, set())
            changed.add(entry.prediction_id)
            if evicted is not None:
                changed.add(evicted)

    def _aggregate(self, key: AggKey) -> Aggregate:
        self._dirty_aggs.add(key)
        agg = self.aggregates.get(key)
        if agg is None:
            agg = self.aggregates[key] = Aggregate.empty(self.window_size)
        return agg

    def _deadline(self, entry: Entry | Waiting) -> float:
        if type(entry) is Waiting:
            return entry.predicted_at + self.ttl
        if entry.prediction is None:
            return entry.first_seen + self.ttl
        if entry.verdict is None:
            return entry.prediction.predicted_at + self.ttl
        return max(entry.verdict.labeled_at, entry.prediction.predicted_at) + self.retention

    def _touch(self, pid: str, entry: Entry) -> None:
        self._dirty.add(pid)
        self._removed.discard(pid)
        heapq.heappush(self._deadlines, (self._deadline(entry), pid))

    # ----------------------------------------------------------------- checkpoints
    def changes(self) -> Changes:
        """What changed since the last :meth:`mark_clean`, encoded for the store.

        Rolling windows are written sample by sample: the samples upserted since the last
        checkpoint that are still in their window, and deletions of those that left it.
        """
        window_set: dict[bytes, bytes] = {}
        window_removed: list[bytes] = []
        for key, pids in self._window_changes.items():
            window = self.aggregates[key].rolling
            written = self._written_samples.get(key, {})
            for pid in pids:
                sample = window.get(pid)
                if sample is not None:
                    window_set[encode_window_field(key, sample)] = orjson.dumps(sample.to_list())
                elif pid in written:
                    window_removed.append(encode_window_field(key, written[pid]))
        return Changes(
            entries={pid: self.entries[pid].encode() for pid in self._dirty},
            removed=sorted(self._removed),
            aggregates={encode_agg_key(k): orjson.dumps(self.aggregates[k].to_dict())
                        for k in self._dirty_aggs},
            window_set=window_set,
            window_removed=window_removed,
            meta=self.meta(),
        )

    def mark_clean(self) -> None:
        """The last :meth:`changes` are stored."""
        for key, pids in self._window_changes.items():
            window = self.aggregates[key].rolling
            written = self._written_samples.setdefault(key, {})
            for pid in pids:
                sample = window.get(pid)
                if sample is None:
                    written.pop(pid, None)
                else:
                    written[pid] = sample
        self._window_changes.clear()
        self._dirty.clear()
        self._removed.clear()
        self._dirty_aggs.clear()

    @property
    def dirty(self) -> bool:
        return bool(self._dirty or self._removed or self._dirty_aggs or self._window_changes)

    def meta(self) -> dict[str, bytes]:
        return {"offsets": orjson.dumps(self.offsets),
                "watermark": orjson.dumps(None if self.watermark == float("-inf") else self.watermark),
                "inputs": orjson.dumps(self.input_high),
                "counters": orjson.dumps(self.counters)}

    def restore(self, entries: dict[bytes, bytes], aggregates: dict[bytes, bytes],
                meta: dict[bytes, bytes], windows: dict[bytes, bytes] | None = None,
                now: float = 0.0) -> None:
        """Load a checkpoint (raw Redis hashes) into this empty state at wall time ``now``."""
        for raw in entries.values():
            entry = Entry.decode(raw)
            self.entries[entry.prediction_id] = entry
            self._deadlines.append((self._deadline(entry), entry.prediction_id))
        heapq.heapify(self._deadlines)
        for raw_key, raw in aggregates.items():
            self.aggregates[decode_agg_key(raw_key)] = Aggregate.from_dict(orjson.loads(raw), self.window_size)
        for field_raw, raw in (windows or {}).items():
            key, _, pid = decode_window_field(field_raw)
            sample = Sample.from_list(orjson.loads(raw))
            self.aggregates[key].rolling.upsert(sample)
            self._written_samples.setdefault(key, {})[pid] = sample
        if b"offsets" in meta:
            self.offsets = orjson.loads(meta[b"offsets"])
        if meta.get(b"watermark") not in (None, b"null"):
            self.watermark = orjson.loads(meta[b"watermark"])
        if b"counters" in meta:
            self.counters.update(orjson.loads(meta[b"counters"]))
        if b"inputs" in meta:
            self.input_high = orjson.loads(meta[b"inputs"])
            self.input_seen = {kind: now for kind in self.input_high}


class Changes(NamedTuple):
    """A partition's changes since its last checkpoint, ready for Redis."""

    entries: dict[str, bytes]
    removed: list[str]
    aggregates: dict[bytes, bytes]
    window_set: dict[bytes, bytes]
    window_removed: list[bytes]
    meta: dict[str, bytes]
