"""Replay a CSV or JSONL file of predictions (and their labels) into Kafka with kafka-python.

File formats
------------
CSV: one row per prediction. Columns ``prediction`` (required; its name is configurable) and,
optionally, ``prediction_id``, ``model``, ``model_version``, ``timestamp``, ``label``,
``confidence``; ``score_<class>`` columns become ``scores``, ``tag_<name>`` columns ``tags``, and
every other column a feature (numbers are parsed). An empty ``label`` cell means "never labeled".

JSONL: one object per line with the PredictionEvent fields, plus optional ``label`` and
``label_timestamp``.

Missing ids, models, versions and timestamps are filled in: ids ``<prefix>-<row>``, timestamps
``start + row * interval``. A label is published ``label_delay`` rows after its prediction and
stamped with the time of the row it is published at (its own ``label_timestamp`` when given).

Examples
--------
>>> from datetime import datetime, timezone
>>> rows = [{"prediction": "UP", "label": "DOWN", "x": "1.5"}, {"prediction": "UP", "label": ""}]
>>> events = list(events_from_rows(rows, ReplayOptions(model="m", id_prefix="r",
...     start=datetime(2026, 1, 1, tzinfo=timezone.utc), interval_seconds=60)))
>>> [(e.prediction.prediction_id, e.prediction.features, e.label and e.label.label) for e in events]
[('r-0000000', {'x': 1.5}, 'DOWN'), ('r-0000001', {}, None)]
>>> [(kind, key) for kind, key, _ in schedule(events, label_delay=1)]
[('predictions', b'r-0000000'), ('predictions', b'r-0000001'), ('labels', b'r-0000000')]
"""

from __future__ import annotations

import csv
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from pydantic import ValidationError

from feedback_loop.errors import ConfigurationError, FeedbackLoopError
from feedback_loop.events import LabelEvent, PredictionEvent, describe_validation_error
from feedback_loop.settings import Topics

_RESERVED = {"prediction_id", "model", "model_version", "timestamp", "label", "confidence",
             "label_timestamp"}


class ReplayFileError(FeedbackLoopError):
    """A row of a replay file is not a valid prediction or label."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to turn rows into events."""

    model: str = "model"
    model_version: str = "1"
    id_prefix: str = "replay"
    prediction_column: str = "prediction"
    label_column: str = "label"
    start: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    interval_seconds: float = 1.0


@dataclass(frozen=True)
class ReplayEvent:
    """A prediction and, when known, its label."""

    prediction: PredictionEvent
    label: LabelEvent | None


def parse_cell(value: Any) -> Any:
    """A CSV cell as an int or float when it reads as one, else unchanged (JSON values pass through).

    >>> parse_cell("3"), parse_cell("2.5"), parse_cell("eu"), parse_cell(7)
    (3, 2.5, 'eu', 7)
    """
    return _number(value) if isinstance(value, str) else value


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _row_to_fields(row: Mapping[str, Any], i: int, opts: ReplayOptions) -> tuple[dict[str, Any], Any, Any]:
    row = dict(row)
    label = row.pop(opts.label_column, None)
    label_ts = row.pop("label_timestamp", None)
    if opts.prediction_column not in row:
        raise ReplayFileError(f"row {i + 1}: no {opts.prediction_column!r} column "
                              "(name it with --prediction-column)")
    ts = row.pop("timestamp", None) or (opts.start + timedelta(seconds=i * opts.interval_seconds)).isoformat()
    fields: dict[str, Any] = {
        "prediction_id": row.pop("prediction_id", None) or f"{opts.id_prefix}-{i:07d}",
        "model": row.pop("model", None) or opts.model,
        "model_version": row.pop("model_version", None) or opts.model_version,
        "timestamp": ts,
        "prediction": parse_cell(row.pop(opts.prediction_column)),
    }
    if "features" in row:  # JSONL
        fields.update(row)
    else:  # CSV
        scores = {k[6:]: float(v) for k, v in row.items() if k.startswith("score_") and v != ""}
        tags = {k[4:]: str(v) for k, v in row.items() if k.startswith("tag_") and v != ""}
        confidence = row.pop("confidence", None)
        fields["features"] = {k: parse_cell(v) for k, v in row.items()
                              if not k.startswith(("score_", "tag_")) and k not in _RESERVED}
        if scores:
            fields["scores"] = scores
        if tags:
            fields["tags"] = tags
        if confidence not in (None, ""):
            fields["confidence"] = float(confidence)
    return fields, (None if label in (None, "") else parse_cell(label)), label_ts


def events_from_rows(rows: Iterable[Mapping[str, Any]], opts: ReplayOptions) -> Iterator[ReplayEvent]:
    """Validate rows into events; a bad row raises :class:`ReplayFileError` naming it."""
    for i, row in enumerate(rows):
        try:
            fields, label, label_ts = _row_to_fields(row, i, opts)
            prediction = PredictionEvent.model_validate(fields)
            label_event = None if label is None else LabelEvent(
                prediction_id=prediction.prediction_id, label=label,
                timestamp=label_ts or prediction.timestamp, source="replay")
        except ValidationError as exc:
            raise ReplayFileError(f"row {i + 1}: {describe_validation_error(exc)}") from None
        except ValueError as exc:
            raise ReplayFileError(f"row {i + 1}: {exc}") from None
        yield ReplayEvent(prediction, label_event)


def read_file(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a ``.csv`` or ``.jsonl`` file."""
    if not path.is_file():
        raise ConfigurationError(f"replay file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ReplayFileError(f"line {n}: invalid JSON: {exc.msg}") from None
    else:
        raise ConfigurationError(f"replay file {path}: expected a .csv or .jsonl file, got {suffix!r}")


def schedule(events: Iterable[ReplayEvent], label_delay: int,
             restamp: bool = True) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic kind, key, value) in publishing order: each label ``label_delay`` rows late.

    A delayed label is stamped with the time of the prediction it is published after, unless the
    file gave it a timestamp of its own later than that (or ``restamp`` is false: labels keep
    their own timestamps).
    """
    if label_delay < 0:
        raise ConfigurationError("--label-delay must be >= 0")
    waiting: deque[tuple[int, LabelEvent]] = deque()
    row = -1
    for row, event in enumerate(events):
        yield "predictions", event.prediction.prediction_id.encode(), event.prediction.to_json()
        if event.label is not None:
            waiting.append((row, event.label))
        while waiting and waiting[0][0] + label_delay <= row:
            _, label = waiting.popleft()
            if restamp and label.timestamp < event.prediction.timestamp:
                label = label.model_copy(update={"timestamp": event.prediction.timestamp})
            yield "labels", label.prediction_id.encode(), label.to_json()
    for _, label in waiting:
        yield "labels", label.prediction_id.encode(), label.to_json()


@dataclass
class PublishStats:
    predictions: int = 0
    labels: int = 0
    seconds: float = 0.0


def publish(
    bootstrap: str, topics: Topics, messages: Iterable[tuple[str, bytes, bytes]], *,
    rate: float = 0.0, progress: Callable[[PublishStats], None] | None = None,
    progress_every: float = 1.0, security: Mapping[str, Any] | None = None,
) -> PublishStats:
    """Send messages with kafka-python; ``rate`` caps messages per second (0: as fast as possible).

    ``security`` is the SASL/TLS keyword arguments of the producer,
    :func:`feedback_loop.kafka_security.kafka_python_kwargs` of the settings.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    names = {"predictions": topics.predictions, "labels": topics.labels, "review-flags": topics.review_flags}
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                 batch_size=512 * 1024, max_request_size=2 * 1024 * 1024, **dict(security or {}))
    except KafkaError as exc:
        raise FeedbackLoopError(f"cannot connect to Kafka at {bootstrap}: {exc}; "
                                "check --kafka / FEEDBACK_LOOP_KAFKA_BOOTSTRAP") from None
    stats = PublishStats()
    started = last_report = time.monotonic()
    sent = 0
    try:
        for kind, key, value in messages:
            producer.send(names[kind], key=key, value=value)
            sent += 1
            if kind == "predictions":
                stats.predictions += 1
            elif kind == "labels":
                stats.labels += 1
            now = time.monotonic()
            if rate > 0 and sent > rate * (now - started):
                time.sleep(min(1.0, sent / rate - (now - started)))
            if progress and now - last_report >= progress_every:
                stats.seconds = now - started
                progress(stats)
                last_report = now
        producer.flush()
    finally:
        producer.close(timeout=10)
    stats.seconds = time.monotonic() - started
    return stats
