"""The short path for new predictions gives the state and messages of the general path."""

from __future__ import annotations

from typing import Any

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.join import Waiting
from streams.observations import unpack
from streams.partition import PartitionState, Record

IDS = ["a", "b", "c", "d"]


def _ts(minute: int, style: int) -> str:
    base = f"2026-11-22T10:{minute:02d}:00"
    return [base + "Z", base + ".250000+01:00", base + ".5Z", f"{1795341600 + minute * 60}"][style]


@st.composite
def records(draw: Any) -> list[Record]:
    out = []
    offsets: dict[str, int] = {}
    for _ in range(draw(st.integers(1, 25))):
        pid = draw(st.sampled_from(IDS))
        topic = draw(st.sampled_from(["predictions", "predictions", "labels", "review-flags"]))
        minute = draw(st.integers(0, 59))
        style = draw(st.integers(0, 3))
        if topic == "predictions":
            body: dict[str, Any] = {"prediction_id": pid, "model": draw(st.sampled_from(["m", "n"])),
                                    "model_version": "1", "timestamp": _ts(minute, style),
                                    "features": {"f": draw(st.sampled_from([0, 1, 2, 3, 2**70, -2**64])), "g": "x"},
                                    "prediction": draw(st.sampled_from(["yes", "no", 1, True, 2.5, 2**65]))}
            if draw(st.booleans()):
                body["scores"] = draw(st.sampled_from([{"yes": 0.75, "no": 0.25}, {"1": 1, "true": 0.5}, {}]))
            if draw(st.booleans()):
                body["confidence"] = draw(st.sampled_from([None, 0.6, 1, 1.5]))
            if draw(st.booleans()):
                body["tags"] = draw(st.sampled_from([{"r": "eu"}, {"r": "us", "p": "pro"}, {}, {"r": 1}]))
            if draw(st.booleans()):
                body["challenger"] = {"prediction": "no", "confidence": 0.8}
        elif topic == "labels":
            body = {"prediction_id": pid, "label": draw(st.sampled_from(["yes", "no", 1, 2.0, "x", 2**65])),
                    "timestamp": _ts(minute, style)}
        else:
            body = {"prediction_id": pid, "reviewer": "ana", "verdict": draw(st.sampled_from(["error", "correct"])),
                    "timestamp": _ts(minute, style)}
        value = json.dumps(body).encode()
        if draw(st.integers(0, 15)) == 0:
            value = value[:-3]  # malformed
        key = draw(st.sampled_from([pid, pid, pid, "other", None]))
        offset = offsets.get(topic, -1) + 1
        offsets[topic] = offset
        out.append(Record(topic, 0, offset, None if key is None else key.encode(), value))
        if draw(st.integers(0, 10)) == 0:
            out.append(out[-1])  # delivered twice
    return out


def _state(quick: bool) -> PartitionState:
    return PartitionState(partition=0, ttl=1800.0, retention=3600.0, window_size=3, max_event_bytes=400,
                          quick=quick)


def _messages(emits: list[Any]) -> list[Any]:
    out = []
    for e in emits:
        value = unpack(e.value) if e.kind == "monitor-input" else orjson.loads(e.value)
        if e.kind == "dead-letters":
            value.pop("at")
        out.append((e.kind, e.key, value))
    return out


def _entries(s: PartitionState) -> dict[str, Any]:
    return {pid: e.entry() if isinstance(e, Waiting) else e for pid, e in s.entries.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.integers(0, 3))
def test_short_path_equals_general_path(recs: list[Record], cut: int) -> None:
    quick, general = _state(True), _state(False)
    batches = [recs[: len(recs) * cut // 4], recs[len(recs) * cut // 4:]]
    for batch in batches:
        assert _messages(quick.apply_all(batch, 100.0)) == _messages(general.apply_all(batch, 100.0))
        assert _entries(quick) == _entries(general)
        for name in ("offsets", "counters", "input_high", "input_seen", "watermark"):
            assert getattr(quick, name) == getattr(general, name), name
        assert {k: a.to_dict() for k, a in quick.aggregates.items()} == {
            k: a.to_dict() for k, a in general.aggregates.items()}
        a, b = quick.changes(), general.changes()
        assert a._replace(entries={}) == b._replace(entries={})
        assert set(a.entries) == set(b.entries)
        for pid, raw in a.entries.items():  # a waiting prediction is its event's bytes either way
            assert raw == b.entries[pid] or orjson.loads(raw) == orjson.loads(b.entries[pid])
        restored = _state(True)
        restored.restore({k.encode(): v for k, v in a.entries.items()}, a.aggregates, {})
        assert _entries(restored) == {pid: _entries(quick)[pid] for pid in a.entries}
        quick.mark_clean()
        general.mark_clean()
    assert quick.expire(10**10) == general.expire(10**10)
    assert {k: a.to_dict() for k, a in quick.aggregates.items()} == {
        k: a.to_dict() for k, a in general.aggregates.items()}
    assert quick.counters == general.counters
