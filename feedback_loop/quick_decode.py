"""Input events decoded and checked in one pass, without pydantic.

The join validates every prediction and label; pydantic's JSON validation of a
:class:`~feedback_loop.events.PredictionEvent` costs four times the JSON decoding itself.
:func:`quick_prediction` and :func:`quick_label` decode with ``msgspec`` into structs that carry
the schemas' constraints (non-empty ids of at most 512 characters, aware timestamps, scores and
confidence in ``[0, 1]``, text tags), about as fast as decoding the JSON alone. They return the
event, or ``None`` for anything they do not accept: every invalid event, and valid ones in a
spelling they do not read (a timestamp in seconds, say). The caller then decodes with
:func:`~feedback_loop.events.decode`, which accepts or rejects the event with pydantic's own
reason. So what is accepted, and how it reads, never depends on the path taken;
``tests/unit/feedback_loop/test_quick_decode.py`` checks both against pydantic on generated
events.

The returned structs have the attributes the join reads of the pydantic events, ``model_extra``
included (the producer's ``challenger`` shadow prediction is the one extra field kept; the join
uses no other).

Examples
--------
>>> raw = (b'{"prediction_id": "p-1", "model": "churn", "model_version": "1", '
...        b'"timestamp": "2026-11-22T10:00:00Z", "features": {"age": 42}, "prediction": "yes", '
...        b'"scores": {"yes": 0.8, "no": 0.2}}')
>>> event = quick_prediction(raw)
>>> event.prediction_id, event.timestamp.isoformat(), event.tags, event.confidence
('p-1', '2026-11-22T10:00:00+00:00', {}, None)
>>> quick_prediction(raw.replace(b'"yes": 0.8', b'"yes": 1.5')) is None  # invalid: pydantic says why
True
>>> quick_label(b'{"prediction_id": "p-1", "label": "no", "timestamp": "2026-11-25T08:00:00.5+01:00"}').label
'no'
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Union

import msgspec

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
#: RFC 3339 text, read by msgspec's parser once :func:`_aware` has looked at its length
_Stamp = Annotated[str, msgspec.Meta(min_length=20, max_length=32)]
_Target = Union[bool, int, str, float]
#: a prediction travels on as the event's own bytes, which orjson reads: it reads an integer past
#: 64 bits as a float, and a float prediction is a regression; such events go through pydantic
_Prediction = Union[bool, Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)], str, float]
#: field name -> JSON name: ``stamp`` is the event's ``timestamp`` text; ``timestamp``, its reading
_RENAME = {"stamp": "timestamp", "timestamp": "__timestamp_read"}  # (set after decoding, always)


class QuickPrediction(msgspec.Struct, rename=_RENAME):
    """A :class:`~feedback_loop.events.PredictionEvent`'s fields (and its ``challenger``, if sent)."""

    prediction_id: _Text
    model: _Text
    model_version: _Text
    stamp: _Stamp
    features: dict[str, Any]
    prediction: _Prediction
    scores: Union[dict[str, _Probability], None] = None
    confidence: Union[_Probability, None] = None
    tags: dict[str, str] = {}
    challenger: Any = msgspec.UNSET
    timestamp: Any = None

    @property
    def model_extra(self) -> dict[str, Any] | None:
        """The extra fields the join reads, as pydantic's ``model_extra`` holds them."""
        return None if self.challenger is msgspec.UNSET else {"challenger": self.challenger}


class QuickLabel(msgspec.Struct, rename=_RENAME):
    """A :class:`~feedback_loop.events.LabelEvent`'s fields."""

    prediction_id: _Text
    label: _Target
    stamp: _Stamp
    source: Union[str, None] = None
    timestamp: Any = None


_predictions = msgspec.json.Decoder(QuickPrediction)
_labels = msgspec.json.Decoder(QuickLabel)
_moment = msgspec.json.Decoder(Annotated[datetime, msgspec.Meta(tz=True)])


def _aware(stamp: str) -> datetime | None:
    """The aware datetime of RFC 3339 text, or ``None``.

    msgspec rounds a fraction of more than six digits to the microsecond, pydantic truncates it:
    such text is left to pydantic (the text before the zone is at most 26 characters long:
    ``YYYY-MM-DDTHH:MM:SS.ffffff``).
    """
    if len(stamp) - (1 if stamp[-1] in "Zz" else 6) > 26:
        return None
    try:
        return _moment.decode(b'"%b"' % stamp.encode())
    except msgspec.DecodeError:
        return None


def _quick(decoder: msgspec.json.Decoder, raw: bytes) -> Any:
    try:
        event = decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    event.timestamp = _aware(event.stamp)
    return None if event.timestamp is None else event


def quick_prediction(raw: bytes) -> QuickPrediction | None:
    """The prediction event in ``raw``, or ``None`` (decode it with pydantic then)."""
    return _quick(_predictions, raw)


def quick_label(raw: bytes) -> QuickLabel | None:
    """The label event in ``raw``, or ``None`` (decode it with pydantic then)."""
    return _quick(_labels, raw)
