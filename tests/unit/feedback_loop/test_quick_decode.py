"""The quick decoders accept only what pydantic accepts, and read it as pydantic reads it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_loop.errors import InvalidEventError
from feedback_loop.events import LabelEvent, PredictionEvent, decode
from feedback_loop.quick_decode import quick_label, quick_prediction
from streams.join import iso

MISSING = object()

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=6)


@st.composite
def timestamps(draw: Any) -> Any:
    """Mostly RFC 3339 text with every kind of deviation, sometimes another JSON value."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    year = draw(st.sampled_from(["2026", "1970", "0001", "9999", "0000", "26", "20261"]))
    month = draw(st.sampled_from(["11", "01", "12", "13", "00", "2"]))
    day = draw(st.sampled_from(["22", "01", "31", "30", "29", "32", "00"]))
    sep = draw(st.sampled_from(["T", "T", "T", " ", "t", "_"]))
    hour = draw(st.sampled_from(["10", "00", "23", "24", "1"]))
    minute = draw(st.sampled_from(["00", "59", "60"]))
    second = draw(st.sampled_from([":00", ":59", ":60", ":61", "", ":5"]))
    fraction = draw(st.sampled_from(["", ".5", ".005000", ".123456", ".1234567", ".123456789", ".", ".x", ".1234565"]))
    zone = draw(st.sampled_from(["Z", "Z", "+00:00", "-03:30", "+14:00", "+23:59", "+24:00", "-00:00", "z",
                                 "+0530", "+05", "", "+05:30:00", " Z"]))
    text = f"{year}-{month}-{day}{sep}{hour}:{minute}{second}{fraction}{zone}"
    if draw(st.booleans()):
        text = text.replace("-", "/", draw(st.integers(0, 1)))
    return text


def _maybe(valid: Any, other: Any = json_values) -> Any:
    return st.one_of(valid, valid, valid, other, st.just(MISSING))


texts = st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["", "x" * 512, "x" * 513, "é" * 512]))
targets = st.one_of(st.text(max_size=5), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False))
probabilities = st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 0.0, 1.0, -0.0, 1.0000001, -1e-9, 2, True]))


@st.composite
def prediction_docs(draw: Any) -> dict[str, Any]:
    doc = {
        "prediction_id": draw(_maybe(texts)),
        "model": draw(_maybe(texts)),
        "model_version": draw(_maybe(texts)),
        "timestamp": draw(_maybe(timestamps())),
        "features": draw(_maybe(st.dictionaries(st.text(max_size=4), json_values, max_size=4))),
        "prediction": draw(_maybe(targets)),
        "scores": draw(_maybe(st.one_of(st.none(), st.dictionaries(st.text(max_size=3), probabilities, max_size=3)))),
        "confidence": draw(_maybe(st.one_of(st.none(), probabilities))),
        "tags": draw(_maybe(st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), json_scalars),
                                            max_size=3))),
        "challenger": draw(_maybe(st.fixed_dictionaries({"prediction": targets, "confidence": probabilities}))),
        draw(st.sampled_from(["extra", "note", "prediction_id"])): draw(st.one_of(st.just(MISSING), json_values)),
    }
    return {k: v for k, v in doc.items() if v is not MISSING}


def _pydantic(schema: Any, raw: bytes) -> Any:
    try:
        return decode(schema, raw)
    except InvalidEventError:
        return None


def _both(quick_decode: Any, schema: Any, doc: dict[str, Any]) -> tuple[Any, Any]:
    """The quick reading of ``doc`` and pydantic's, when the quick path accepts it (else Nones);
    fails if the quick path accepts what pydantic rejects."""
    raw = json.dumps(doc).encode()
    quick = quick_decode(raw)
    if quick is None:
        return None, None
    slow = _pydantic(schema, raw)
    assert slow is not None, f"accepted what pydantic rejects: {doc}"
    _same_time(quick, slow)
    return quick, slow


def _same_time(quick: Any, slow: Any) -> None:
    assert quick.timestamp == slow.timestamp
    assert quick.timestamp.utcoffset() == slow.timestamp.utcoffset()
    assert quick.timestamp.timestamp() == slow.timestamp.timestamp()
    assert iso(quick.timestamp) == iso(slow.timestamp)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_docs())
def test_quick_prediction_reads_what_pydantic_reads(doc: dict[str, Any]) -> None:
    quick, slow = _both(quick_prediction, PredictionEvent, doc)
    if quick is None:
        return
    for name in ("prediction_id", "model", "model_version", "features", "scores", "confidence", "tags"):
        assert getattr(quick, name) == getattr(slow, name), name
    assert type(quick.prediction) is type(slow.prediction) and quick.prediction == slow.prediction
    assert [type(v) for v in (quick.scores or {}).values()] == [type(v) for v in (slow.scores or {}).values()]
    assert type(quick.confidence) is type(slow.confidence)
    assert (quick.model_extra or {}).get("challenger") == (slow.model_extra or {}).get("challenger")


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({"prediction_id": _maybe(texts), "label": _maybe(targets),
                              "timestamp": _maybe(timestamps()),
                              "source": _maybe(st.one_of(st.none(), st.text(max_size=5)))}))
def test_quick_label_reads_what_pydantic_reads(doc: dict[str, Any]) -> None:
    quick, slow = _both(quick_label, LabelEvent, {k: v for k, v in doc.items() if v is not MISSING})
    if quick is None:
        return
    assert (quick.prediction_id, quick.source) == (slow.prediction_id, slow.source)
    assert type(quick.label) is type(slow.label) and quick.label == slow.label


@st.composite
def rfc3339(draw: Any) -> str:
    """Valid RFC 3339 timestamps, up to six digits of fraction."""
    date = f"{draw(st.integers(1971, 2100)):04d}-{draw(st.integers(1, 12)):02d}-{draw(st.integers(1, 28)):02d}"
    clock = f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}:{draw(st.integers(0, 59)):02d}"
    digits = draw(st.integers(0, 6))
    fraction = "." + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits))) if digits else ""
    zone = draw(st.one_of(st.just("Z"), st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"),
                                                  st.integers(0, 23), st.integers(0, 59))))
    return f"{date}T{clock}{fraction}{zone}"


@settings(max_examples=300, deadline=None)
@given(texts.filter(lambda t: 0 < len(t) <= 512), rfc3339())
def test_producers_usual_events_take_the_quick_path(pid: str, stamp: str) -> None:
    """Every event with an RFC 3339 timestamp (at most six digits of fraction) and float scores is
    read by the quick path, as pydantic reads it (else the speed-up would not apply)."""
    doc = {"prediction_id": pid, "model": "m", "model_version": "1", "timestamp": stamp,
           "features": {"a": 1, "b": "x"}, "prediction": "yes", "scores": {"yes": 0.75, "no": 0.25},
           "tags": {"region": "eu"}}
    raw = json.dumps(doc).encode()
    quick, slow = quick_prediction(raw), _pydantic(PredictionEvent, raw)
    assert slow is not None and quick is not None, stamp
    _same_time(quick, slow)
