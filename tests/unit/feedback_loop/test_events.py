"""Event schemas: what they accept, and reasons that name the field."""

from __future__ import annotations

import base64
import json

import pytest

from feedback_loop.errors import InvalidEventError
from feedback_loop.events import (LabelEvent, PredictionEvent, ReviewFlag, dead_letter, decode,
                                  json_schemas)

PREDICTION = {"prediction_id": "p-000123", "model": "churn", "model_version": "2026-11-01",
              "timestamp": "2026-11-22T10:00:00Z", "features": {"age": 42, "plan": "pro"},
              "prediction": "yes", "scores": {"yes": 0.81, "no": 0.19}, "tags": {"region": "eu"}}


def test_the_contract_example_decodes():
    event = decode(PredictionEvent, json.dumps(PREDICTION).encode())
    assert event.prediction == "yes" and event.tags == {"region": "eu"} and event.confidence is None


@pytest.mark.parametrize("value,kind", [("yes", str), (1, int), (True, bool), (2.5, float)])
def test_prediction_types_are_kept(value, kind):
    event = decode(PredictionEvent, json.dumps({**PREDICTION, "prediction": value}).encode())
    assert type(event.prediction) is kind


@pytest.mark.parametrize("change,reason", [
    ({"features": None}, "features: Input should be an object"),
    ({"timestamp": "2026-11-22T10:00:00"}, "timestamp: Input should have timezone info"),
    ({"scores": {"yes": 1.5}}, "scores.yes: Input should be less than or equal to 1"),
    ({"confidence": -0.1}, "confidence: Input should be greater than or equal to 0"),
    ({"prediction_id": ""}, "prediction_id: String should have at least 1 character"),
    ({"tags": {"region": 3}}, "tags.region: Input should be a valid string"),
])
def test_reasons_name_the_field(change, reason):
    with pytest.raises(InvalidEventError) as info:
        decode(PredictionEvent, json.dumps({**PREDICTION, **change}).encode())
    assert info.value.reason == reason


def test_missing_fields_and_non_objects():
    with pytest.raises(InvalidEventError, match="^label: Field required$"):
        decode(LabelEvent, b'{"prediction_id": "p", "timestamp": "2026-11-22T10:00:00Z"}')
    with pytest.raises(InvalidEventError, match="^message: expected a JSON object$"):
        decode(LabelEvent, b"[1, 2]")
    with pytest.raises(InvalidEventError, match="^invalid JSON"):
        decode(LabelEvent, b"\xff\xfe")
    with pytest.raises(InvalidEventError, match="tombstone"):
        decode(LabelEvent, None)


def test_review_flag_verdicts():
    flag = decode(ReviewFlag, b'{"prediction_id": "p", "reviewer": "ana", "verdict": "error", '
                              b'"corrected_label": "no", "timestamp": "2026-11-22T10:05:00Z"}')
    assert (flag.verdict, flag.corrected_label, flag.note) == ("error", "no", None)
    with pytest.raises(InvalidEventError, match="verdict: Input should be 'error' or 'correct'"):
        decode(ReviewFlag, b'{"prediction_id": "p", "reviewer": "ana", "verdict": "maybe", '
                           b'"timestamp": "2026-11-22T10:05:00Z"}')


def test_dead_letter_keeps_the_raw_payload_and_cuts_huge_ones():
    letter = dead_letter(source_topic="labels", partition=3, offset=7, key=b"p-1", payload=b"\x00abc",
                         reason="r")
    assert base64.b64decode(letter.payload) == b"\x00abc" and not letter.payload_truncated
    assert (letter.source_topic, letter.partition, letter.offset, letter.key) == ("labels", 3, 7, "p-1")
    big = dead_letter(source_topic="labels", partition=0, offset=0, key=None, payload=b"x" * 100,
                      reason="r", max_payload_bytes=10)
    assert base64.b64decode(big.payload) == b"x" * 10 and big.payload_truncated and big.key is None


def test_every_topic_has_a_schema():
    schemas = json_schemas()
    assert len(schemas) == 9
    assert schemas["dead-letters"]["properties"]["payload"]["description"] == "raw value, base64"
