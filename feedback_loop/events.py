"""The event schemas of every topic in the contract (``DESIGN.md``).

Input events are written by code outside the project, so their field names are fixed;
output events may gain fields but never lose one. Every timestamp carries a zone.

Decoding never raises anything but :class:`~feedback_loop.errors.InvalidEventError`,
whose ``reason`` names the field and what is wrong, ready for a dead letter.

Examples
--------
>>> raw = b'{"prediction_id": "p-1", "label": "no", "timestamp": "2026-11-25T08:00:00Z"}'
>>> decode(LabelEvent, raw).label
'no'
>>> try:
...     decode(LabelEvent, b'{"prediction_id": "p-1", "timestamp": "2026-11-25T08:00:00Z"}')
... except InvalidEventError as exc:
...     print(exc.reason)
label: Field required
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from feedback_loop.errors import InvalidEventError

#: A class label (string, int or bool) or a number (regression). Order matters: bool before int.
Target = Union[StrictBool, StrictInt, StrictStr, StrictFloat]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]

NonEmpty = Field(min_length=1, max_length=512)


def utc_iso(t: float) -> str:
    """Epoch seconds as an ISO-8601 UTC timestamp, the form events carry.

    >>> utc_iso(0.0)
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


class Event(BaseModel):
    """Base of all events: immutable, unknown fields kept (producers may add context)."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    def to_json(self) -> bytes:
        """Encode as UTF-8 JSON, dropping unset optional fields that are ``None``."""
        return self.model_dump_json(exclude_none=False).encode()


class PredictionEvent(Event):
    """A model's prediction, emitted by a producer service on ``predictions``."""

    prediction_id: str = NonEmpty
    model: str = NonEmpty
    model_version: str = NonEmpty
    timestamp: AwareDatetime
    features: dict[str, Any]
    prediction: Target
    scores: dict[str, Probability] | None = None
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    tags: dict[str, str] = Field(default_factory=dict)


class LabelEvent(Event):
    """Ground truth for a prediction, on ``labels``; may arrive before or long after it."""

    prediction_id: str = NonEmpty
    label: Target
    timestamp: AwareDatetime
    source: str | None = None


class ReviewFlag(Event):
    """A reviewer's verdict on a prediction, on ``review-flags``."""

    prediction_id: str = NonEmpty
    reviewer: str = NonEmpty
    verdict: Literal["error", "correct"]
    corrected_label: Target | None = None
    note: str | None = Field(None, max_length=10_000)
    timestamp: AwareDatetime


class Outcome(Event):
    """One revision of a prediction's truth, on ``outcomes``."""

    prediction_id: str
    model: str
    model_version: str
    prediction: Target
    label: Target | None
    correct: bool | None = Field(description="None for regression")
    label_source: Literal["label", "review"]
    revision: int = Field(ge=1)
    predicted_at: AwareDatetime
    labeled_at: AwareDatetime
    tags: dict[str, str] = Field(default_factory=dict)


class MetricsSnapshot(Event):
    """Live metrics of one model version and segment, on ``metrics`` and ``GET /api/models``."""

    model: str
    model_version: str
    segment: dict[str, str]
    window: Literal["cumulative", "rolling"]
    count: int
    correct: int
    accuracy: float | None
    predictions: int
    label_coverage: float | None
    expired_unlabeled: int
    orphan_labels: int
    updated_at: AwareDatetime
    window_size: int | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    log_loss: float | None = None
    brier: float | None = None
    mae: float | None = None
    rmse: float | None = None
    label_delay_p50: float | None = None
    label_delay_p95: float | None = None
    estimated_accuracy: float | None = Field(
        None, description="accuracy estimate of the latest window: labels known so far, confidence for the rest")
    estimate_reconciled: dict[str, Any] | None = Field(
        None, description="the latest window whose labels landed since: estimated vs realized accuracy")


class DriftAlert(Event):
    """A detected (or resolved) drift, on ``drift-alerts``."""

    alert_id: str
    kind: Literal["concept", "data", "prediction", "estimated_performance"]
    detector: str
    model: str
    model_version: str
    feature: str | None = None
    statistic: float | None = None
    threshold: float | None = None
    reference_size: int | None = None
    window_size: int | None = None
    severity: Literal["warning", "critical"]
    status: Literal["firing", "resolved"] = "firing"
    detected_at: AwareDatetime
    first_offending_at: AwareDatetime | None = None
    message: str


class ReviewRequest(Event):
    """A prediction routed to human review, on ``review-queue``."""

    prediction_id: str
    model: str
    model_version: str
    reason: str = Field(description="The policy that routed it: least_confidence, margin, entropy, "
                                    "learned, shadow, label_error, drift or disagreement.")
    priority: float = Field(ge=0, le=1, description="Higher is reviewed first (the policy's score).")
    prediction: Target
    features: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, float] | None = None
    requested_at: AwareDatetime = Field(description="Event time: the prediction's timestamp, or the "
                                                    "label's for a suspected label error.")
    confidence: float | None = None
    label: Target | None = Field(None, description="The ground-truth label under suspicion (label_error).")
    predicted_at: AwareDatetime | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    policy_scores: dict[str, float] = Field(default_factory=dict,
                                            description="Every policy's score of the item.")


class ModelUpdate(Event):
    """A decision about an online model (promotion, rollback, checkpoint), on ``model-updates``."""

    model: str
    action: Literal["promote", "rollback", "checkpoint", "register"]
    version: str
    previous_version: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    at: AwareDatetime


class DeadLetter(Event):
    """A message that could not be processed, with where it came from and why, on ``dead-letters``."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    payload: str = Field(description="raw value, base64")
    reason: str
    at: AwareDatetime
    payload_truncated: bool = False


#: Every topic of the contract and the schema of its values.
TOPIC_SCHEMAS: dict[str, type[Event]] = {
    "predictions": PredictionEvent,
    "labels": LabelEvent,
    "review-flags": ReviewFlag,
    "outcomes": Outcome,
    "metrics": MetricsSnapshot,
    "drift-alerts": DriftAlert,
    "review-queue": ReviewRequest,
    "model-updates": ModelUpdate,
    "dead-letters": DeadLetter,
}


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each offending field and the reason.

    >>> try:
    ...     ReviewFlag.model_validate({"prediction_id": "p", "reviewer": "ana", "verdict": "maybe",
    ...                                "timestamp": "2026-11-22T10:05:00Z"})
    ... except ValidationError as exc:
    ...     print(describe_validation_error(exc))
    verdict: Input should be 'error' or 'correct'
    """
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        if err["type"] == "json_invalid":
            parts.append(f"invalid JSON: {err['ctx'].get('error', err['msg'])}")
        elif err["type"] == "model_type":
            parts.append("message: expected a JSON object")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def json_bytes(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps`` for data that came in events.

    JSON allows integers of any size, orjson writes none beyond 64 bits (and reads them as
    floats): such an integer is written as that float (or, past the float range, as its text)
    instead of failing.

    >>> json_bytes({"id": 7, "big": 2**70, "list": [2**64, -2**63]})
    b'{"id":7,"big":1.1805916207174113e+21,"list":[1.8446744073709552e+19,-9223372036854775808]}'
    """
    try:
        return orjson.dumps(value, option=option)
    except TypeError:
        return orjson.dumps(_wide_ints_as_floats(value), option=option)


def _wide_ints_as_floats(value: Any) -> Any:
    if type(value) is int and not -(2**63) <= value < 2**64:
        try:
            return float(value)
        except OverflowError:
            return str(value)
    if isinstance(value, dict):
        return {k: _wide_ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wide_ints_as_floats(v) for v in value]
    return value


def decode(schema: type[Event], raw: bytes | str | None) -> Any:
    """Validate ``raw`` JSON against ``schema`` or raise :class:`InvalidEventError`."""
    if raw is None:
        raise InvalidEventError("message: empty value (tombstone)")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidEventError(describe_validation_error(exc)) from None
    except UnicodeDecodeError as exc:  # pragma: no cover - pydantic reports invalid UTF-8 itself
        raise InvalidEventError(f"invalid UTF-8: {exc}") from None


def dead_letter(
    *, source_topic: str, partition: int, offset: int, key: bytes | None, payload: bytes | None,
    reason: str, max_payload_bytes: int = 1_000_000,
) -> DeadLetter:
    """Build the dead letter of a raw message; payloads beyond ``max_payload_bytes`` are cut."""
    payload = payload or b""
    truncated = len(payload) > max_payload_bytes
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", "backslashreplace"),
        payload=base64.b64encode(payload[:max_payload_bytes]).decode("ascii"),
        payload_truncated=truncated,
        reason=reason,
        at=datetime.now(timezone.utc),
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every topic's values, by topic name."""
    return {topic: schema.model_json_schema() for topic, schema in TOPIC_SCHEMAS.items()}
